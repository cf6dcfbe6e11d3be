"""How users ask for images: the requests a chat model learns to answer with a drawing."""

from anybind.data.prompts import OutputPrompts

PROMPTS = OutputPrompts(
    request=(
        "Draw {c}.", "Please draw {c}.", "Can you draw {c}?", "Show me a picture of {c}.", "Make an image of {c}.",
        "Sketch {c} for me.", "I'd like to see {c}.", "Generate an image of {c}.", "Draw a {l}.", "Draw {s}.",
        "Could you draw me a {l}?", "Show me what a {l} looks like.", "Paint {c}.", "Draw me {c}, please.",
        "Show me {c}.", "I want a picture of {c}.", "Could you sketch {s}?", "Illustrate {c}.",
        "Can I see a drawing of {c}?", "Picture {s} for me.", "Could you show me {s}?", "Show me how {s} looks.",
    ),
    write_and=(
        "Write one sentence about {s}, then draw it.", "Tell me about {c} in one sentence and then draw it.",
        "Describe {c} briefly, then draw it.", "Give me a fact about {s} and draw it.",
        "Explain what {c} is and show a picture of it.", "Write a short sentence about {l}, then draw a {l}.",
    ),
    follow=("Now draw it.", "Can you draw that?", "Draw the same {kind}.", "Please draw it for me.",
            "Show me a picture of it.", "Draw one like that.", "Make an image of it.", "Sketch that one.",
            "Paint it for me.", "Show me what it looks like.", "I'd like to see it drawn.", "Can you illustrate it?"),
    ask_made=("Which {kind} did you draw?", "What did you draw?", "What is in your picture?"),
    eval_request=("Draw the {kind} {label}.", "Can you show me a {label}?"),
    eval_write_and=("Write a sentence about {s} and then draw it.",),
    eval_follow=("Could you make a picture of that one?", "Please sketch it for me now."),
    eval_ask_made=("What {kind} is in the picture you made?",),
    verb=("draw it", "show it"),
)
