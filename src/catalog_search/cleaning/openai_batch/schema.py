"""What the VLM must answer: a pydantic model, sent as a strict JSON schema (structured outputs)
and used again to validate every answer, since a batch answer can still be cut off or refused."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from catalog_search.cleaning.openai_batch import ATTRIBUTE_FIELDS


class ProductMetadata(BaseModel):
    """Structured metadata of one product; the picture wins where the title contradicts it."""

    model_config = ConfigDict(extra="forbid")

    clean_title: str = Field(description="short product title: no brand, SKU, price, pack size or shipping text; "
                                         "colour and pattern as seen in the image")
    category: Optional[str] = Field(description="broad product category, e.g. Apparel, Footwear, Accessories, Furniture")
    style: Optional[str] = Field(description="style, e.g. casual, formal, sporty, mid-century; null if unclear")
    material: Optional[str] = Field(description="main visible material, e.g. cotton, leather, oak; null if unclear")
    color: Optional[str] = Field(description="main colour as seen in the image")
    pattern: Optional[str] = Field(description="solid, striped, checked, polka dot, floral, ...")

    @field_validator("clean_title")
    @classmethod
    def _title_not_empty(cls, value: str) -> str:
        # strict schemas cannot say minLength, so an empty title is caught here and retried
        if not value.strip():
            raise ValueError("clean_title is empty")
        return value.strip()


def answer_model(vocabulary: dict[str, list[str]]) -> type[ProductMetadata]:
    """ProductMetadata with the attributes named in `vocabulary` (checked by checks.validate)
    limited to those values: an enum in the schema, so the model cannot answer "navy blue" where
    the catalog says "Navy"."""
    fields = {name: (Optional[Literal[tuple(values)]], Field(description=ProductMetadata.model_fields[name].description))
              for name, values in vocabulary.items() if values}
    return create_model("ProductMetadata", __base__=ProductMetadata, **fields) if fields else ProductMetadata


def response_format(model: type[ProductMetadata]) -> dict:
    """The `response_format` the openai client itself builds for `chat.completions.parse(response_format=model)`."""
    from openai.lib._parsing._completions import type_to_response_format_param

    return type_to_response_format_param(model)


def parse_answer(model: type[ProductMetadata], content: str | None) -> tuple[ProductMetadata | None, str | None]:
    """(answer, None) or (None, why it is unusable): malformed JSON and schema failures are told apart."""
    if not content:
        return None, "empty answer"
    try:
        return model.model_validate_json(content), None
    except ValidationError as e:
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            return None, f"malformed JSON: {first['msg']} ({content[:80]!r})"
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'answer'}: {err['msg']}" for err in e.errors()[:3])
        return None, f"schema: {problems}"

