"""Training: the shared loop and stage helper, and one module per stage.

    world -> bind -> decoder -> align-in -> align-out -> instruct

Stages import models, data and chat; they never import evaluation (lint-imports checks it).
"""
