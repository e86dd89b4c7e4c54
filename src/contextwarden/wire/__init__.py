"""An API on the wire: the dialects, stream assemblers, the conversation model, its history and validator, token counts and prices."""
