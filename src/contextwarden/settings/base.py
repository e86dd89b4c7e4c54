from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A profile section. Unknown keys are an error that names the key."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)
