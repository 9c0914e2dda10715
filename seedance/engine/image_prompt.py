"""Chat prompts with images (LLaVA-family models): the chat template renders each image part as the model's
image token, as the model's processor does; each image token then expands into that image's feature rows, which
go to the engine as prompt embeddings (kind "image"). Runs on the engine's vision thread, never on the event
loop: base64, Pillow decoding, the template and (in the thread mode) the vision tower all happen there; with
`--engine process` the gateway's vision thread decodes and resizes, and the engine process runs the tower."""

from __future__ import annotations

from dataclasses import dataclass

from seedance.engine.config import EngineConfig
from seedance.engine.errors import InvalidRequest
from seedance.engine.payload import payload_bytes


@dataclass(frozen=True, slots=True)
class ImageInput:
    """An image as the client sent it: the encoded file (PNG, JPEG, ...), raw or as standard base64."""

    data: bytes | str


def content_chars(messages: list[dict]) -> int:
    """Characters of text in the messages (strings or text parts), for the length check before tokenizing."""
    total = 0
    for m in messages:
        content = m.get("content", "")
        if isinstance(content, str):
            total += len(content)
        else:
            total += sum(len(p.get("text", "")) for p in content if p.get("type") == "text")
    return total


def count_images(messages: list[dict]) -> int:
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if p.get("type") == "image")


def for_template(messages: list[dict], multimodal: bool) -> list[dict]:
    """Messages as the chat template takes them: content parts for a multimodal model (an image part is
    `{"type": "image"}`, the processor's convention), text joined into one string for a text-only one."""
    out = []
    for m in messages:
        content = m.get("content", "")
        if multimodal:
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else [
                {"type": "image"} if p.get("type") == "image" else {"type": "text", "text": p.get("text", "")}
                for p in content]
            out.append({**m, "content": parts})
        else:
            text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
            out.append({**m, "content": text})
    return out


@dataclass(frozen=True, slots=True)
class PreparedImages:
    """A chat with images up to the vision tower: its token ids, where its image tokens stand, its images."""

    ids: list[int]
    marks: list[int]  # positions in ids of the image tokens, one per image
    images: list  # PIL images (RGB), decoded and bounded

    def splice(self, features: list) -> list:
        """The prompt parts: token-id lists and ("image", rows) pairs, each image token replaced by its rows."""
        parts: list = []
        start = 0
        for mark, rows in zip(self.marks, features, strict=True):
            parts += [self.ids[start:mark], ("image", rows)]
            start = mark + 1
        parts.append(self.ids[start:])
        return [p for p in parts if not (isinstance(p, list) and not p)]


def prepare_images(messages: list[dict], tokenizer, image_token_id: int, config: EngineConfig) -> PreparedImages:
    """Template and Pillow decoding of a chat with images (InvalidRequest for a bad or oversized image, or a
    template that renders another number of image tokens than there are images)."""
    from seedance.models.llava import ImageError, decode_image

    images = [p["image"] for m in messages if isinstance(m.get("content"), list)
              for p in m["content"] if p.get("type") == "image"]
    ids = tokenizer.apply_chat_template(for_template(messages, True))
    marks = [i for i, t in enumerate(ids) if t == image_token_id]
    if len(marks) != len(images):
        raise InvalidRequest(f"the chat template rendered {len(marks)} image tokens for {len(images)} images "
                             "(an image token in the text, or a template without image support)")
    try:
        decoded = [decode_image(payload_bytes(img.data, config.max_image_bytes, f"image {i}"),
                                config.max_image_pixels) for i, img in enumerate(images)]
    except ImageError as err:
        raise InvalidRequest(str(err)) from None
    return PreparedImages(ids, marks, decoded)


def build_image_prompt(messages: list[dict], tokenizer, vision, config: EngineConfig) -> list:
    """The prompt parts (token-id lists and ("image", features) pairs) of a chat with images, the vision tower
    run here (the thread mode; the process mode sends prepare_images' pixels to its core instead)."""
    prepared = prepare_images(messages, tokenizer, vision.image_token_id, config)
    return prepared.splice(vision.encode(prepared.images) if prepared.images else [])
