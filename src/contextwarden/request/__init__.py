"""One request's path: lifecycle, pipeline and its stage clock, the context a stage gets, its notes, session and agent keys."""
