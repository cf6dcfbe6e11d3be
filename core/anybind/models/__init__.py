"""Models: the shared space's towers and losses, the LM backbone, input projectors, generative
outputs, and finding a decoder by reference."""
