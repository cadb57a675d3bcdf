"""Hand-written essays and non-English lines for the tiny tokenizer's training text.

Original text written for this project; ``make_corpus.py`` puts it at the start of ``corpus.txt``.
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
