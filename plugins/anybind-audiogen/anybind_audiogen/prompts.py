"""How users ask for speech: the requests a chat model learns to answer by speaking."""

from anybind.data.prompts import OutputPrompts

PROMPTS = OutputPrompts(
    request=(
        "Say {s}.", "Please say {s}.", "Can you say {l}?", "Say {l} out loud.", "Pronounce {l}.", "Speak the word {l}.",
        "Read {s} aloud.", "I'd like to hear {s}.", "Let me hear {l}.", "Say the word {l}, please.",
        "How do you say {l}?", "Speak {s} for me.", "I want to hear {s}.", "Could you read {l} out?",
        "Can you pronounce {l}?", "Voice {s}, please.", "Can you let me hear {s}?", "Could you speak {s}?",
    ),
    write_and=(
        "Write one sentence about {s}, then say it.", "Tell me about {s} in one sentence and then say it.",
        "Describe {s} briefly, then say it out loud.", "Write a short sentence about {l}, then speak it.",
    ),
    follow=("Now say it.", "Can you say that?", "Say it out loud.", "Please say it for me.", "Let me hear it.",
            "Read it aloud.", "Speak it.", "Pronounce that one.", "I'd like to hear it spoken.", "How does it sound?"),
    ask_made=("Which {kind} did you say?", "What did you say?", "Which word was that?"),
    eval_request=("Speak the {kind} {label}.", "Could you say {label} for me?"),
    eval_write_and=("Write a sentence about {s} and then say it.",),
    eval_follow=("Could you say that one aloud?", "Please pronounce it for me now."),
    eval_ask_made=("Which {kind} did you just say?",),
    verb=("say it", "speak it"),
)
