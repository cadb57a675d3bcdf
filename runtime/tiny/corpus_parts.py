"""Hand-written pieces that ``make_corpus.py`` combines into the tiny tokenizer's training text.

Everything here is original text written for this project: sentence parts, a general vocabulary,
code skeletons, example tools and chat lines. Only ``make_corpus.py`` uses this module.
"""

SUBJECTS = [
    "The engineer", "A small team", "Our neighbor", "The old library", "Every morning the baker",
    "The river", "A curious child", "The committee", "The server", "My grandmother", "The scheduler",
    "A stray cat", "The new intern", "The orchestra", "Nobody in the village", "The cache",
    "A tired traveler", "The compiler", "Her brother", "The weather station", "Each session",
    "The lighthouse keeper", "A quiet student", "The kitchen", "The market", "Most of the birds",
    "The database", "An old friend", "The delivery van", "The museum guide", "The mountain road",
    "This function", "The storm", "Our teacher", "The night shift", "The garden", "A single request",
    "The review board", "The ferry", "The gardener", "Why the model", "How the team",
]

PREDICATES = [
    "measured the distance between the two hills", "wrote a long letter about the harvest",
    "kept every receipt in a shoebox", "forgot to close the window", "returned the answer in under a second",
    "painted the fence a shade of blue nobody liked", "waited for the signal to change",
    "counted the tokens one by one", "found a bug in the retry logic", "sang quietly while working",
    "moved the idle sessions to disk", "rebuilt the index overnight", "planted beans along the wall",
    "read the instructions twice", "argued about the budget for an hour", "cleaned the attic at last",
    "crossed the bridge before sunrise", "ran out of memory again", "kept the old map just in case",
    "checked the logs for errors", "baked bread for the whole street", "lost the keys in the snow",
    "answered every question politely", "split the work into smaller pieces", "closed the shop early",
    "drew a diagram on the whiteboard", "saved the results to a file", "watched the ships leave the harbor",
    "rejected the request with a clear message", "learned to play the violin", "fixed the leaking roof",
    "timed how long each step took", "ate lunch by the fountain", "repeated the experiment three times",
    "reused the cached prefix", "sent the report to the wrong address", "taught the parrot a new word",
]

CONNECTORS = ["because", "although", "while", "after", "before", "so that", "until", "even though", "since", "unless"]

CLAUSES = [
    "the rain had finally stopped", "nobody else was awake", "the deadline moved again",
    "the numbers did not add up", "the bus was late", "the test suite took too long",
    "everyone wanted a second opinion", "the lights went out", "the GPU was busy",
    "the queue grew longer every minute", "the old version still worked", "the wind changed direction",
    "the customer asked politely", "the file was missing", "the summer was unusually dry",
    "the conversation paused for a tool call", "the bakery smelled of cinnamon", "the meeting ran over",
    "the cat refused to move", "the disk was almost full", "the bridge was closed for repairs",
]

ASIDES = [
    "which surprised everyone", "as usual", "or so the story goes", "for the third time this week",
    "without saying a word", "more or less on time", "to nobody's surprise", "at least in theory",
]

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]

VERBS = ["load", "parse", "count", "merge", "filter", "render", "encode", "split", "fetch", "score",
         "normalize", "evict", "schedule", "validate", "summarize", "allocate"]
NOUNS = ["blocks", "tokens", "sessions", "orders", "records", "messages", "users", "events", "pages",
         "requests", "rows", "tool_calls", "prefixes", "images", "invoices"]
FIELDS = ["name", "size", "created_at", "priority", "status", "owner", "length", "price", "email",
          "last_seen", "weight", "count", "kind", "region"]
PATHS = ["/var/log/app.log", "data/train.jsonl", "src/main.py", "~/notes/todo.md", "/etc/hosts",
         "reports/2023-q4.csv", "config/settings.toml", "docs/index.md"]
QUERIES = ["cheap flights to Lisbon", "how to sharpen a knife", "python sort by two keys",
           "opening hours of the museum", "weather next weekend", "recipe for lentil soup"]
PEOPLE = ["Ada Nkemelu", "Bruno Silva", "Chen Wei", "Dana O'Brien", "Emil Lindqvist", "Farah Haddad",
          "Gita Rao", "Hugo Martin", "Ines Duarte", "Jonas Weber", "Kaito Mori", "Lena Novak"]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Kyoto", "Montreal", "Valparaiso", "Tbilisi", "Auckland",
          "Porto", "Reykjavik", "Lagos", "Hanoi", "Zürich", "São Paulo"]
TAGS = ["urgent", "archived", "beta", "internal", "vip", "new", "flagged", "draft", "paid", "eu"]

PY_SKELETONS = [
    '''def {verb}_{noun}(items: list[dict], limit: int = {limit}) -> list[dict]:
    """Return at most `limit` {noun}, keeping those with a {field}."""
    out = []
    for item in items:
        if item.get("{field}") is None:
            continue
        out.append(item)
        if len(out) >= limit:
            break
    return out''',
    '''class {Noun}Store:
    """Keeps {noun} in memory, indexed by {field}."""

    def __init__(self) -> None:
        self._by_{field}: dict[str, list] = {{}}

    def add(self, record: dict) -> None:
        key = str(record["{field}"])
        self._by_{field}.setdefault(key, []).append(record)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_{field}.values())''',
    '''def {verb}_{noun}(path: str) -> int:
    total = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            total += len(line.split(","))
    return total''',
    '''@dataclass(frozen=True)
class {Noun}Config:
    {field}: str = "default"
    {other}: int = {limit}
    scale: float = {factor}

    def validate(self) -> None:
        if self.{other} <= 0:
            raise ValueError(f"{other} must be positive, got {{self.{other}}}")''',
    '''async def {verb}_{noun}(client, ids: list[int]) -> dict[int, dict]:
    results = await asyncio.gather(*(client.get(f"/{noun}/{{i}}") for i in ids))
    return {{i: r.json() for i, r in zip(ids, results) if r.status_code == 200}}''',
    '''def test_{verb}_{noun}_keeps_order():
    data = [{{"{field}": i, "{other}": i * {factor}}} for i in range({limit})]
    result = {verb}_{noun}(data)
    assert [r["{field}"] for r in result] == sorted(r["{field}"] for r in result)''',
    '''for i in range(0, len({noun}), {limit}):
    batch = {noun}[i : i + {limit}]
    logger.info("processing batch %d with %d {noun}", i // {limit}, len(batch))
    try:
        {verb}(batch)
    except TimeoutError as exc:
        logger.warning("batch %d timed out: %s", i, exc)''',
]

OTHER_SKELETONS = [
    "$ grep -rn \"{field}\" src/ | head -n {limit}\n$ python -m pytest tests/ -q -k {noun}\n{limit} passed in 1.42s",
    "SELECT {field}, COUNT(*) AS n\nFROM {noun}\nWHERE created_at > NOW() - INTERVAL '7 days'\nGROUP BY {field}\nORDER BY n DESC\nLIMIT {limit};",
    "function {field}Of(list) {{\n  return list.filter((x) => x.{field} !== undefined).map((x) => x.{field});\n}}\nconsole.log({field}Of({noun}).length);",
    "[server]\nhost = \"0.0.0.0\"\nport = {port}\nmax_{noun} = {limit}\n\n[cache]\npath = \"{path}\"\nevict_after = \"2h\"",
    "curl -s -X POST http://localhost:{port}/v1/{noun} \\\n  -H 'Content-Type: application/json' \\\n  -d '{{\"{field}\": \"x\", \"limit\": {limit}}}'",
    "docker run --rm -p {port}:{port} -v $(pwd)/data:/data app:latest --{field}={limit}",
    "Traceback (most recent call last):\n  File \"{path}\", line {limit}, in <module>\n    main()\nKeyError: '{field}'",
]

TOOLS = [
    {"name": "get_weather", "description": "Current weather for a city.",
     "params": [("city", "string", "City name"), ("unit", "string", "celsius or fahrenheit")]},
    {"name": "search_web", "description": "Search the web and return the top results.",
     "params": [("query", "string", "Search terms"), ("max_results", "integer", "How many results")]},
    {"name": "read_file", "description": "Read a text file from the workspace.",
     "params": [("path", "string", "Path of the file"), ("max_lines", "integer", "Lines to read")]},
    {"name": "run_sql", "description": "Run a read-only SQL query.",
     "params": [("query", "string", "The SQL text"), ("timeout_s", "integer", "Time limit")]},
    {"name": "send_email", "description": "Send an email to a colleague.",
     "params": [("to", "string", "Address"), ("subject", "string", "Subject line"), ("urgent", "boolean", "Flag")]},
    {"name": "set_thermostat", "description": "Set the target temperature.",
     "params": [("temperature", "number", "Degrees"), ("room", "string", "Room name")]},
]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a careful assistant that uses tools when they help.",
    "You help engineers debug their systems. Be concise.",
    "You are a travel planner. Check facts with the tools before answering.",
]

USER_ASKS = [
    "What is the weather like in {city} today?",
    "Can you find the {noun} that failed yesterday?",
    "Please look up the latest report about {noun} and summarize it.",
    "Is it warmer in {city} than here?",
    "I need the number of {noun} created this week.",
    "Send a short note to the team saying the {noun} migration is done.",
    "How many {noun} are in the file, roughly?",
]

ASSISTANT_LEADS = ["", "", "Let me check that.", "I will look it up.", "One moment, calling the tool.",
                   "Sure, checking now."]

# A general vocabulary for free-form sentences, so common English words get their own merges.
ADJECTIVES = """
able ancient angry anxious bitter black blue bold brave bright broad broken busy calm careful cheap
clean clear clever cold common complex cool crowded curious damp dark dear deep delicate dirty distant
dry dull eager early easy elegant empty enormous equal exact faint fair famous fast fierce firm flat
fond foreign formal fragile free fresh friendly full gentle giant glad golden good graceful grand
gray great green grim happy hard harsh heavy hidden high hollow honest hot huge humble hungry icy
ideal idle immense important innocent keen kind large late lazy lean light little lively lonely long
loose loud lovely low loyal lucky mad main massive mellow mild modern modest narrow nasty native near
neat nervous new nice noble noisy normal odd old open orange ordinary pale patient plain pleasant
polite poor popular precise pretty private proud public pure purple quick quiet rapid rare raw ready
real red rich right rigid rough round rude rural sad safe salty scarce secret serious shallow sharp
shiny short shy silent silly simple slim slow small smooth soft solid sour spare steady steep sticky
stiff still strange strict strong sudden sunny super sweet swift tall tame tender thick thin tidy
tiny tired tough true ugly unique upper urgent useful vague vast violet visible vital warm weak wet
white whole wide wild wise wooden yellow young
""".split()

COMMON_NOUNS = """
account apple answer apron arrow attic autumn baby bag balloon band bank basket bath beach bean bear
bed bell bench bicycle bird blanket boat body bone book boot bottle bowl box branch bread brick bridge
brush bucket building butter button cabin cake camera candle canvas car card carpet cart castle cave
chain chair chalk cheese cherry chest chicken child chimney church circle city clock cloud coast coat
coffee coin collar comb cookie corner cotton country cousin cow crowd cup curtain cushion desk diary
dinner doctor dog door drawer dream dress drum duck dust eagle earth egg elbow engine envelope evening
eye face factory farm feather fence field finger fire fish flag flame floor flower fog forest fork
fountain fox friend frog fruit garage gate ghost gift glass glove goat gold grass guitar hair hall
hammer hand harbor hat heart hill horse hospital hotel house island jacket jam jar jewel journey
kettle key king kitchen kite knee knife ladder lake lamp lantern leaf lemon letter library lion lock
machine map meadow meal metal mirror monkey moon morning mountain mouse mud museum nail needle nest
net newspaper night notebook nurse oak ocean office onion orchard owl painter palace pan paper parcel
park parrot path pencil pepper piano picture pillow pipe planet plate pocket poem pond potato prince
puzzle queen rabbit radio rail rain ribbon ring river road rock roof room rope rose sail salt sand
school scissors sea season shadow sheep shelf shell ship shirt shoe shop shoulder sister sky sleeve
snake snow sock soldier song soup spoon spring square stage stair star station stone storm story
street string sugar summer sun table tail teacher tent thread throat thunder ticket tiger toast tooth
towel tower town toy train tree truck trumpet tunnel umbrella valley vase village violin voice wagon
wall watch water wave wheel whistle window wing winter wire wolf woman wood wool yard
""".split()

PAST_VERBS = """
admired arranged arrived asked baked balanced borrowed bought built buried called carried carved
caught changed chased checked chose cleaned climbed closed collected cooked copied counted covered
crossed danced decided delivered described designed discovered divided dragged drew dropped earned
emptied enjoyed entered escaped examined explained fed filled fixed folded followed found gathered
guarded guessed hammered handled hid hung hurried imagined joined jumped kept kicked knitted knocked
landed laughed learned lifted listened loaded locked loved marked measured mended missed mixed moved
noticed obeyed offered opened ordered packed painted parked passed picked planted played pointed
polished poured prepared pressed printed pulled pushed questioned raced reached read recorded
remembered repaired repeated replaced rescued returned rolled rushed sailed saved scattered searched
served settled shared shouted signed sketched slipped sorted spotted squeezed stacked started stirred
stopped stretched studied suggested supported surprised swept tasted thanked tied touched traced
traded trusted turned visited waited walked wandered warned washed watched waved weighed whispered
wiped wished worried wrapped wrote
""".split()

ADVERBS = """
again almost already always angrily barely boldly briefly calmly carefully cheerfully clearly closely
completely easily eagerly early finally firmly gently gladly gracefully happily hardly honestly
instantly kindly lazily loudly mostly nearly neatly never noisily often openly partly patiently
perhaps politely promptly quickly quietly rarely really recently roughly rudely safely seldom sharply
silently simply slowly softly sometimes soon steadily strangely suddenly swiftly tenderly tightly
today together tomorrow truly usually warmly wearily well wildly yesterday
""".split()

PREPOSITIONS = ["across", "along", "behind", "beside", "beyond", "inside", "near", "over", "past",
                "through", "toward", "under", "with", "without", "around", "into", "onto", "from"]

DIALOGUE = [
    "Hello! How are you today?", "Hi there, thanks for your help.", "Good morning, everyone.",
    "Thank you so much, that works perfectly.", "Sorry, I didn't understand the question.",
    "Could you explain that again, please?", "Yes, of course.", "No, not yet.", "Maybe later.",
    "Great, let's do that.", "I'm not sure, but I think so.", "What time is it in Tokyo?",
    "Please write a short poem about the sea.", "Summarize this paragraph in one sentence.",
    "Translate 'good night' into French.", "Why is the sky blue?", "Tell me a joke about computers.",
    "What's the difference between a list and a tuple?", "Goodbye, and have a nice weekend!",
]
