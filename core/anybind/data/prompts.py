"""Every prompt template the stages train on and the evaluations ask, in one place.

Templates are modality- and world-neutral: world-specific words come from the world's
``world.json`` through :meth:`anybind.data.manifest.Manifest.fill` (``{l}``/``{label}`` a
label, ``{c}`` a caption, ``{s}`` how a sentence names the label, ``{kind}`` what a label
is), and how to ask for an output (an image, a sound) comes from the decoder plugin that
makes it, as an :class:`OutputPrompts`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: align-in's questions about an attachment: modality-neutral, so the projector does not learn
#: that attachments are pictures.
GENERIC_QUESTIONS = (
    "What is this?",
    "Describe this.",
    "What does this show?",
    "What is it?",
    "Tell me what this is.",
    "Caption this.",
    "What is in this attachment?",
    "Can you describe it briefly?",
)

#: Text-only requests, answered by the frozen LM's own words: they teach an output's first
#: token where *not* to fire, and keep the LM's manners through instruct. Topics x templates
#: give a few hundred different requests.
TOPICS = (
    "the sea", "Paris", "photosynthesis", "gravity", "a cat", "coffee", "the moon", "rain", "music", "chess",
    "{s}", "friendship", "volcanoes", "bicycles", "the internet", "winter", "honey bees", "trains",
    "the color blue", "mathematics", "a good breakfast", "sleep", "dinosaurs", "the alphabet", "{c}",
)
ASK = (
    "Tell me about {t}.", "Write one sentence about {t}.", "What do you know about {t}?", "Explain {t} simply.",
    "Give me a fun fact about {t}.", "Why is {t} interesting?", "Write a haiku about {t}.", "Describe {t} in a few words.",
    "Is {t} important?", "What is {t}?",
)
CHAT = ("What is 2+3?", "Give me a friendly greeting.", "Name a color.", "What is 7 times 8?", "Tell me a joke.",
        "What is your name?", "Count from one to five.", "How are you today?", "Translate 'thank you' into French.",
        "What day comes after Monday?",
        # ...and everyday requests of many shapes (imperatives, yes/no questions, "in one sentence",
        # "name a ..."), none with an output's verb or a small number in its answer: with only the
        # ten above, an unfamiliar plain question was answered with a label ("Name a fruit that is
        # yellow." -> "Here is a handwritten seven.")
        "Name an animal that can fly.", "Name a vegetable that is green.", "Name a country in Europe.",
        "Name a musical instrument with strings.", "Name a bird that cannot fly.", "Name a planet.",
        "Name a tool a carpenter uses.", "Name a sport played with a ball.", "Name a flower that smells sweet.",
        "What is the capital of Italy?", "What is the largest ocean?", "What do cows drink?",
        "What is the opposite of up?", "What is the opposite of early?", "What colour are bananas when they are ripe?",
        "What do you call a baby cat?", "What do plants need to grow?", "What is ice made of?",
        "Where does the sun rise?", "Who wrote Romeo and Juliet?", "What language is spoken in Brazil?",
        "Is the moon a planet?", "Is a tomato a fruit?", "Can penguins swim?", "Do fish sleep?",
        "Is it cold at the North Pole?", "Are whales mammals?", "Is glass a liquid?",
        "Welcome me to the class in one sentence.", "Wish me a good morning.", "Thank me for my help in one sentence.",
        "Give me a word that rhymes with cat.", "Give me a synonym for happy.", "Give me an antonym of fast.",
        "Suggest a name for a puppy.", "Suggest something to cook for dinner.", "Recommend a hobby for a rainy day.",
        "Describe the weather in spring in one sentence.", "Describe a forest in a few words.",
        "Explain why the sky gets dark at night.", "Explain what a verb is.", "Explain how a rainbow forms.",
        "Tell me something kind.", "Tell me a riddle.", "Tell me a short story about a fox.",
        "Compliment my cooking in one sentence.", "Cheer me up, please.", "Motivate me to go for a run.",
        "Write a haiku about autumn.", "Write a short poem about the rain.", "Write a slogan for a bakery.",
        "Summarize the story of Cinderella in one sentence.", "Spell the word apple.", "Define the word brave.",
        "How do I boil an egg?", "How do birds find their way south?", "How does a compass work?",
        "Why do leaves change colour?", "Why is the ocean salty?", "Why do cats purr?",
        "Which is heavier, a kilogram of feathers or a kilogram of stone?", "Which season comes after summer?",
        "Who was Albert Einstein?", "When do people usually eat breakfast?", "What rhymes with moon?",
        "List some fruits that are red.", "List some things you find in a kitchen.", "List a few farm animals.",
        "Good evening! How is it going?", "Hi there!", "Thanks a lot!", "What should I wear on a rainy day?",
        "Convert this sentence to the past tense: I walk to school.", "Correct this: she go to the market.",
        "Finish this sentence: The early bird...", "Reply politely to an invitation to a party.",
        "Translate 'good night' into Spanish.", "What does the word 'enormous' mean?", "Is coffee hot or cold?")

#: Everyday requests made up from parts: a verb addressed to someone ("Congratulate my cousin in
#: one line.") or a request for one of something ("Share one idea for a party."). Their "one" is
#: English's, not a label's: with requests like these only in CHAT (each seen about once in
#: instruct), held-out ones like "Wish my brother a happy birthday in one sentence." were answered
#: "Here is a handwritten three.", 3 in 10 alone and 7 in 10 after talk about an attachment
#: (bench/RESULTS.md, "instruct: everyday requests from parts").
#: Many verbs, each seen a few times: with the fourteen first ones only, an unfamiliar verb ("Greet
#: me in one sentence.", the multi-turn evaluation's, never trained on) was answered with a drawing
#: 14 times in 15. A verb that is not an output's is what these teach, not a list to learn by heart.
ADDRESSED_VERBS = ("Congratulate", "Reassure", "Advise", "Motivate", "Comfort", "Invite", "Console", "Inspire",
                   "Entertain", "Calm", "Warn", "Write a note for", "Write a greeting for", "Send thanks to",
                   "Thank", "Encourage", "Praise", "Compliment", "Teach", "Remind", "Apologise to",
                   "Wish luck to", "Introduce yourself to", "Applaud", "Forgive", "Reply to", "Write to",
                   "Write a toast for", "Write a limerick for", "Guide", "Help", "Coach", "Amuse", "Surprise",
                   "Cheer on", "Celebrate with", "Welcome back", "Wish well", "Tell a joke to", "Give advice to",
                   "Recommend a book to", "Explain fractions to", "Persuade", "Convince", "Toast", "Bid goodnight to",
                   "Wish a happy birthday to", "Flatter", "Tease", "Honour", "Quiz", "Challenge", "Interview",
                   "Bless", "Soothe", "Befriend")
ADDRESSED_TO = ("me", "my cousin", "my parents", "my team", "my neighbour", "the new student", "my uncle", "the players",
                "my coworker", "our class")
ADDRESSED_HOW = ("", " in one sentence", " in one line", " briefly", " warmly", " in a few words", " kindly",
                 " with a short sentence", " in one short sentence", " politely")
ONE_OF = ("Share one", "Suggest one", "Give me one", "Name one", "Tell me one", "Give me two", "List three", "Recommend one")
#: ...each starting with a noun whose plural takes an "s"
ONE_THING = ("idea for a party", "way to relax", "tip for learning to swim", "snack for school", "toy for a baby",
             "reason to smile", "game for children", "word for happy", "fact about elephants", "painter from Spain",
             "use for a paper clip", "thing to pack for a beach trip", "habit for better sleep", "dessert with apples")


def addressed_request(rng) -> str:
    """An everyday request from the parts above (about 6,000 different ones)."""
    if rng.random() < 0.5:
        return f"{rng.choice(ADDRESSED_VERBS)} {rng.choice(ADDRESSED_TO)}{rng.choice(ADDRESSED_HOW)}."
    one, thing = rng.choice(ONE_OF), rng.choice(ONE_THING)
    noun, _, rest = thing.partition(" ")
    return f"{one} {thing if one.endswith('one') else f'{noun}s {rest}'}."


#: Requests for a sentence about a label and nothing else: answered with the same sentence a
#: request for "..., then draw it" starts its answer with, and no output, so that only the
#: request's own words (its output verb) can open an output's gate. ("Say something about"
#: is left out: a model that speaks may rightly answer it with speech.)
WRITE_ONLY = ("Write one sentence about {s}.", "Tell me about {s} in one sentence.", "Describe {s} briefly.",
              "Write a short sentence about {l}.", "Give me one fact about {s}.", "What can you tell me about {s}?")

#: Follow-ups that ask for the earlier answer's label in one word. No request answered in words
#: starts "Say" (nor "Say hello." in CHAT): to a model that speaks, "Say ..." asks for speech.
FOLLOW_NAME = ("Name it in one word.", "Just the word, please.", "Answer in one word.")
#: ...or ask again which one the last attachment was (after other talk, maybe).
#: Some name what was sent ("the file I sent"): asked only "Which one was it?", a question that
#: named an attachment with none attached was read as one about the current turn ("It is the
#: digit five.", the same digit every time).
SAY_AGAIN = ("Which {kind} was that?", "What was that one again?", "Which one was it?", "And that {kind} was?",
             "What {kind} did I just send you?", "What was in the attachment I sent?", "What did that file show?",
             "Which {kind} was in the file I sent?", "What was it again?", "Which {kind} was it again?",
             "Tell me which {kind} I sent.", "Which {kind} did that attachment hold?", "What was in my file?",
             "So which {kind} was that one?", "Going back to the attachment: which {kind} was it?",
             "Which {kind} was in it?", "What did I send you just now?", "What {kind} did the attachment show?",
             "Recall which {kind} that was.", "What was in my previous message?")
#: ...or made up from parts ("What did my previous upload show?"): asked with twenty fixed ones only,
#: "Which digit was in my last attachment?" (the evaluation's) was answered with a digit of no
#: attachment, 5 times in 10: the words that point back were not yet what the answer followed.
#: ("last" is left to the evaluation.)
AGAIN_ASK = ("Which {kind} was in", "What was in", "What {kind} did you see in", "What did", "Which {kind} did",
             "Tell me which {kind} was in", "Can you tell me again what was in", "Once more, what was in")
AGAIN_WHAT = ("my previous file", "the file I sent before", "my earlier attachment", "the most recent file I sent",
              "my previous upload", "the attachment from before", "the recording or picture I sent", "my earlier message",
              "the thing I sent a moment ago", "what I sent earlier", "my most recent attachment", "the file from earlier")


def again_question(rng, kind: str) -> str:
    """A question about the last attachment, asked again (one of :data:`SAY_AGAIN`, or made up from parts)."""
    if rng.random() < 0.5:
        return rng.choice(SAY_AGAIN).format(kind=kind)
    ask, what = rng.choice(AGAIN_ASK).format(kind=kind), rng.choice(AGAIN_WHAT)
    return f"{ask} {what} show?" if ask.endswith("did") else f"{ask} {what}?"


#: Questions about several attachments at once, answered with each one's label in order.
SEVERAL = ("What are these?", "What {kind}s do these show?", "What do these show?", "Name each of these.",
           "What is in these attachments?")

#: The multi-turn evaluation's own wording (never trained on): plain questions between the turns
#: about attachments, asking again about the last attachment, and about several at once. No plain
#: question asks to "say" something: a model that speaks rightly answers that with speech.
EVAL_PLAIN = ("What colour is the sky on a clear day?", "Name a fruit that is yellow.", "What is the opposite of hot?",
              "Greet me in one sentence.", "What do bees make?", "Is water wet?")
EVAL_SAY_AGAIN = ("Remind me, which {kind} was that?", "Which {kind} was in my last attachment?",
                  "Tell me again which {kind} that was.")
EVAL_SEVERAL = ("Which {kind}s are these?", "Tell me what each of these shows.", "Name the {kind}s I attached.")


#: A sentence and then several outputs in one answer; ``{verbs}`` joins each output's
#: :attr:`OutputPrompts.verb` in the order asked ("draw it and say it"). None starts "Say ...":
#: to a model that speaks, "Say the number two." asks for speech alone.
WRITE_AND_ALL = ("Write one sentence about {s}, then {verbs}.", "Tell me about {s} in one sentence, then {verbs}.",
                 "Describe {s} briefly, then {verbs}.", "Give me a fact about {s}, then {verbs}.")
#: ...and for a sentence alone (no output verb: answered in words, with no output), worded unlike WRITE_ONLY.
EVAL_WRITE_ONLY = ("Write a sentence about {s}.", "Tell me something about {s}.")
EVAL_WRITE_AND_ALL = ("Write a sentence about {s} and then {verbs}.", "First tell me something about {s}, then {verbs}.")


@dataclass(frozen=True)
class OutputPrompts:
    """How users ask for one output modality; a decoder plugin registers one (``DecoderSpec.prompts``)."""

    #: answered by the output alone ("Draw {c}.")
    request: tuple[str, ...]
    #: answered by a sentence, then the output ("Write one sentence about {s}, then draw it.")
    write_and: tuple[str, ...]
    #: after a question about an attachment: make what it was ("Now draw it.")
    follow: tuple[str, ...]
    #: after the model made one: what was it ("Which {kind} did you draw?")
    ask_made: tuple[str, ...]
    #: evaluation requests, worded unlike the training ones
    eval_request: tuple[str, ...]
    eval_write_and: tuple[str, ...]
    eval_follow: tuple[str, ...] = ()
    eval_ask_made: tuple[str, ...] = ()
    #: the request for this output within one for several ("draw it" in "..., then draw it and say it")
    verb: tuple[str, ...] = ()


def sentence(text: str) -> str:
    """``text`` as a sentence: capitalised, ending in a full stop unless it has an end already."""
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def first_sentence(text: str) -> str:
    match = re.match(r"\s*(.+?[.!?])(\s|$)", text, flags=re.DOTALL)
    return (match.group(1) if match else text).strip()
