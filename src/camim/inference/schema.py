"""The JSON schema of ``camim serve``'s API (pydantic models; FastAPI publishes them at ``/openapi.json``)."""

from __future__ import annotations

from camim.errors import CamimError

try:
    from pydantic import BaseModel, Field
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
    raise CamimError(
        f"`camim serve` needs the optional serve extra ({exc.name} is missing): pip install 'camim[serve]'"
    ) from None


class EntityIn(BaseModel):
    """An entity: a token span ``pos`` [start, end), a character span ``char`` [start, end), or a mention ``name``
    (which must occur exactly once in the post)."""

    pos: list[int] | None = Field(None, min_length=2, max_length=2, examples=[[0, 2]])
    char: list[int] | None = Field(None, min_length=2, max_length=2, examples=[[0, 12]])
    name: str | None = Field(None, max_length=500, examples=["Rafael Nadal"])


class PredictRequest(BaseModel):
    """One post. Give ``text`` (raw post, tokenised MNRE-style) or ``token`` (a token list)."""

    text: str | None = Field(None, examples=["Rafael Nadal gets engaged to Mery Perello"])
    token: list[str] | None = None
    head: EntityIn | str
    tail: EntityIn | str
    image: str | None = Field(None, description="base64 of the encoded image, or a data: URL")
    caption: str | None = Field(None, description="a caption of the image; generated or omitted when absent")
    top_k: int | None = Field(None, ge=1, description="return only the k most probable relations")


class RelationScore(BaseModel):
    relation: str
    probability: float


class EntityOut(BaseModel):
    name: str
    pos: list[int]


class PredictResponse(BaseModel):
    relation: str
    probability: float
    distribution: list[RelationScore]
    tokens: list[str]
    head: EntityOut
    tail: EntityOut
    caption: str | None
    caption_source: str
    absent_modalities: list[str]
    notes: list[str]


class BatchRequest(BaseModel):
    items: list[PredictRequest]


class BatchResponse(BaseModel):
    results: list[PredictResponse]


class ErrorResponse(BaseModel):
    error: str
