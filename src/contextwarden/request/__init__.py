"""One request's path: lifecycle, pipeline, the context a stage gets, its notes, session and agent keys."""
