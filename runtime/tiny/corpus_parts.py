"""Hand-written pieces that ``make_corpus.py`` combines into the tiny tokenizer's training text.

Everything here is original text written for this project: short essays, sentence parts, code
skeletons, example tools and chat lines. Only ``make_corpus.py`` uses this module.
"""

HANDWRITTEN = [
    """The lighthouse on the northern point has not guided a ship in thirty years, yet the town still
paints it every spring. Children carry buckets of white paint up the spiral stairs, and the oldest
fisherman, who claims he can read the weather in the color of the gulls, supervises from a folding
chair. Nobody remembers deciding that this was a tradition. It simply became one, the way a path
appears across a field once enough people have walked the same line.""",
    """A good kitchen knife should feel heavier at the handle than at the tip. Hold it loosely, let the
weight of the blade do the work, and keep your fingertips curled away from the edge. Onions are the
usual test: a sharp knife slides through the layers without crushing them, and your eyes water much
less. If you have to press hard, it is time to use the whetstone, not more force.""",
    """Caching is the art of remembering the right things for the right amount of time. Keep too little
and every request pays the full price again; keep too much and memory fills with answers nobody will
ask for twice. The hard part is rarely the data structure. It is deciding what "the same question"
means, and noticing the moment when an old answer quietly stops being true.""",
    """When the train stopped between two stations, the carriage went silent for a moment, then filled
with the small noises of people adjusting: a newspaper folded, a phone unlocked, a child asking why.
The conductor announced a signal fault ahead. Outside, a heron stood in a flooded ditch, perfectly
still, as if it had been waiting for exactly this train to arrive so it could ignore it.""",
    """Before you change a configuration file on a production machine, copy it. Write down what you
changed and why, in plain words, somewhere your colleagues will find it. Most outages are not caused
by clever mistakes. They are caused by a tired person at the end of a long day editing the wrong
file, or the right file on the wrong host, and then going home.""",
    """Bread needs four things: flour, water, salt and time. Yeast is technically a fifth, but it is
already waiting in the air and on the grain, ready to wake up if you are patient. Mix the dough,
cover the bowl, and leave it somewhere warm. The kitchen will smell different in the morning, sour
and sweet at once, and the dough will have doubled without anyone touching it.""",
    """The museum's smallest exhibit is a single bronze key, no longer than a finger, found at the bottom
of a well. Nobody knows which door it opened. The label beside it has been rewritten four times as
historians changed their minds, and visitors stand in front of it longer than in front of the great
painted ceilings upstairs, perhaps because a key is an invitation and a ceiling is not.""",
    """A queue is fair when everyone waits in the order they arrived; it is efficient when the shortest
jobs go first. Schedulers spend their lives negotiating between those two ideas. Give priority to
short tasks and long ones may starve; treat all tasks equally and a single slow request can hold up
hundreds of quick ones behind it. Most real systems pick a compromise and then measure it carefully.""",
    """Our hiking group set out at dawn with three maps, two compasses and one thermos of coffee that
was supposed to last the whole day. By the second ridge the coffee was gone, one map had blown into a
valley, and we had agreed that the trail markers were more trustworthy than any of us. We reached
the hut just before the rain, wet only at the edges, and very proud of ourselves.""",
    """Memory on a graphics card is precious. A model's weights take a fixed share, and the rest is
shared by every conversation in flight. Each token a conversation has seen leaves behind keys and
values for every layer, and those grow with the length of the dialogue. Moving the idle ones to main
memory, or even to disk, lets many more sessions stay alive while only the active ones run.""",
    """The garden was planted in rows the first year, neat and measured with string. By the third year
the tomatoes had wandered into the beans, the mint had claimed an entire corner, and sunflowers grew
wherever the birds had dropped seeds. It produced more food than ever. The neat rows had been for the
gardener; the mess was for the plants.""",
    """Writing a test first feels slow, like tying your shoes before a race you are eager to start. Then
the race begins and you notice who did not tie their shoes. A test is a small promise about how the
code behaves, written down while you still remember what you meant. Months later it is often the
only honest description of the system left.""",
    """In the market, the spice seller weighs cumin on a brass scale older than the building around it.
He does not trust the digital scale his son bought him, although he keeps it on the counter, switched
on, so customers can see the numbers. The two instruments have never disagreed by more than a gram.
He says that is because the brass one keeps the electronic one honest.""",
    """Every protocol is a conversation with rules about who speaks next. A client asks, a server
answers, and both agree in advance what a question looks like and when an answer is complete. Long
streams are the interesting case: the server keeps talking, one piece at a time, and the client must
decide how much to read before acting, and what to do if the line goes quiet.""",
    """Snow fell all night without wind, so in the morning every fence post wore a tall white hat and
every branch carried a line of snow exactly as wide as itself. The street was silent. The first car
down the hill moved slowly, as if embarrassed to be leaving tracks, and the dog next door stood at
the gate for a full minute before deciding the world was still safe to walk on.""",
    """Numbers in a report should come with their units and their uncertainty. Twelve is not a result;
twelve milliseconds at the median over one thousand requests, with the ninety-ninth percentile at
forty, is a result. Say which machine, which version, which day. The next person to read the report
may be you, in a year, trying to understand why everything got slower.""",
    """The letter arrived forty years late, its stamp from a country that no longer exists. It was
addressed to the house, not a person, and it described the view from the upstairs window: the chapel,
the row of poplars, the crooked chimney of the bakery. The chapel and the chimney are still there.
The poplars were cut down long ago, but the new owners planted three more after reading it.""",
    """A tool call is a request written by the model and carried out by the program around it. The
model names a function, supplies arguments as JSON, and then stops to wait. The program runs the
function, writes the result back into the conversation, and lets the model continue. Done well, the
pause costs almost nothing; done badly, the whole conversation is recomputed from the beginning.""",
    """The choir rehearses on Tuesday evenings in a school gym that smells of floor polish. Their
director, a retired chemistry teacher, explains harmony in terms of reactions: some notes bond, some
repel, and a few form unstable compounds that resolve only at the end of a phrase. Nobody is sure the
analogy is correct, but the tenors have never sung better.""",
    """If a function has to be explained with the word "and", it probably does two things. Split it.
Give each half a name that says what it returns, not how it works. A reader should be able to guess
the body from the signature and be right most of the time; when they are surprised, the surprise
belongs in a comment, written for the next person, not for the compiler.""",
    """Dear Ms. Alvarez, thank you for your message of March 3rd. We have reviewed the invoice and
agree that the second delivery was charged twice. A corrected statement is attached, and the refund
of 48.50 euros will reach your account within five working days. Please let us know if anything
else looks wrong. Kind regards, the accounts team.""",
    """Q: Why does my program print the same random number every time?
A: Because the generator is seeded with a fixed value. That is usually what you want in tests, since
a failing case can be replayed exactly. In production, seed from the operating system instead, or
better, let the library choose. Never use a predictable seed for anything involving secrets.""",
    """Meeting notes, Thursday. Present: Priya, Tom, Sven, Aiko. 1) The nightly build failed twice
because a test depended on the system clock; Tom will inject a fake clock. 2) Disk usage on the
cache hosts is at eighty-one percent; Sven proposes evicting sessions idle for more than two days.
3) Next release planned for the 14th. Action items recorded in the tracker.""",
    """The owl that lives in the church tower is not wise, whatever the stories say. It is, however,
extremely patient. It sits for hours watching the graveyard grass for the smallest movement, and in
winter it hunts in daylight when the mice grow careless. The verger says it has outlived three
bishops, which he considers a kind of wisdom after all.""",
]

MULTILINGUAL = [
    "Café au lait, crème brûlée, naïve façade, déjà vu: les mots voyagent avec leurs accents.",
    "Die Straße war nass, aber die Bäckerei öffnete pünktlich um sechs Uhr. Grüße aus Köln!",
    "El tren de las ocho llegó tarde; la señora del andén sonrió y abrió su paraguas.",
    "東京の朝は静かです。駅まで歩いて、コーヒーを一杯飲みます。",
    "你好，世界。今天天气很好，我们去公园散步吧。",
    "서울은 밤에도 밝습니다. 시장에서 따뜻한 국수를 먹었어요.",
    "Привет! Сегодня мы проверяем кэш и перезапускаем сервер.",
    "Emoji in logs: ✅ passed, ❌ failed, ⚠️ warning, 🚀 deployed, 🔥 hot path, 🧪 test, 📦 package, 🎉 done.",
    "Math: α + β = γ, ∑ xᵢ ≤ ∞, π ≈ 3.14159, √2 ≈ 1.414, 90° angles, ±0.5 mm, €12.50, £7, ¥300.",
    "Arrows and boxes: ← ↑ → ↓ ⇒ ┌─┐ │ │ └─┘ • … — “quoted” ‘single’ «guillemets»",
]

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
