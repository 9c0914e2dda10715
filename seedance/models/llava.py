"""LLaVA-family models (a local Hugging Face `LlavaForConditionalGeneration` directory): the vision tower and the
projector run through transformers' own modules; their image features become prompt embedding rows that our
Llama runner splices in where the prompt's image tokens stand (engine/prompt_embeds.py), so the language model,
its paged KV and its scheduling are the text path's.

Both checkpoint layouts load: the classic one (`language_model.model.*`, `vision_tower.*`,
`multi_modal_projector.*`) and transformers 5's (`model.language_model.*`, `model.vision_tower.*`, ...).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch

LLAVA_MODEL_TYPES = ("llava",)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # what Pillow may decode here; anything else is refused

_PREFIXES = {  # checkpoint prefix -> (part, prefix inside that part)
    "language_model.model.": ("text", "model."),
    "language_model.lm_head.": ("text", "lm_head."),
    "model.language_model.": ("text", "model."),
    "lm_head.": ("text", "lm_head."),
    "vision_tower.": ("vision", ""),
    "model.vision_tower.": ("vision", ""),
    "multi_modal_projector.": ("projector", ""),
    "model.multi_modal_projector.": ("projector", ""),
}


class ImageError(ValueError):
    """An image this server will not decode (format, size, a broken file); the message is for the client."""


def is_llava(config) -> bool:
    return getattr(config, "model_type", None) in LLAVA_MODEL_TYPES


def split_weights(weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The checkpoint's tensors by part: text (in the Llama layout our runner loads), vision, projector."""
    parts: dict[str, dict[str, torch.Tensor]] = {"text": {}, "vision": {}, "projector": {}}
    for name, tensor in weights.items():
        for prefix in sorted(_PREFIXES, key=len, reverse=True):  # the longest prefix that matches
            if name.startswith(prefix):
                part, inner = _PREFIXES[prefix]
                parts[part][inner + name[len(prefix):]] = tensor
                break
        else:
            raise ValueError(f"unexpected weight {name!r} in a LLaVA checkpoint")
    return parts


@dataclass(eq=False)
class ImageFront:
    """What preparing a model's images needs, without its weights: the image processor (decode's output to the
    tower's pixels) and the image token. `--engine process` sends it to the gateway (pickled in the Ready frame),
    so images are decoded and resized there and only their bounded pixel tensors cross to the engine process."""

    image_processor: object  # transformers image processor (preprocessor_config.json)
    image_token_id: int

    def preprocess(self, images: list) -> torch.Tensor:
        """PIL images (RGB) -> [n, 3, H, W] float32 pixels, the processor's fixed size whatever the input's."""
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def front(self) -> ImageFront:
        return ImageFront(self.image_processor, self.image_token_id)


@dataclass(eq=False)
class VisionEncoder(ImageFront):
    """Images -> [n, hidden_size] feature rows for the language model, one tensor per image."""

    tower: torch.nn.Module  # transformers vision model (CLIP, SigLIP, ...)
    projector: torch.nn.Module  # transformers LlavaMultiModalProjector
    feature_layer: int | list[int]
    select_strategy: str
    dtype: torch.dtype
    device: torch.device

    def encode(self, images: list) -> list[torch.Tensor]:
        """PIL images (RGB) -> their features, batched through the tower in one call."""
        return self.encode_pixels(self.preprocess(images))

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """preprocess()'s pixels -> one [rows, hidden_size] tensor per image (tower, feature layers, projector)."""
        out = self.tower(pixels.to(self.device, self.dtype), output_hidden_states=True, return_dict=True)
        layers = [self.feature_layer] if isinstance(self.feature_layer, int) else list(self.feature_layer)
        selected = [out.hidden_states[i] for i in layers]
        if self.select_strategy == "default":  # the CLS token is not an image patch
            selected = [h[:, 1:] for h in selected]
        features = self.projector(torch.cat(selected, dim=-1))
        return [f.to("cpu").contiguous() for f in features]


def load_vision(path: Path, config, parts: dict[str, dict[str, torch.Tensor]], device: str, dtype: torch.dtype
                ) -> VisionEncoder:
    """The vision tower and projector of a LLaVA checkpoint, from split_weights' parts, and its image processor."""
    from transformers import AutoImageProcessor, AutoModel
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    weights = parts["vision"]
    tower = AutoModel.from_config(config.vision_config)
    own = set(tower.state_dict())
    if not weights.keys() <= own and {f"vision_model.{k}" for k in weights} <= own:
        weights = {f"vision_model.{k}": v for k, v in weights.items()}  # a tower saved without its wrapper
    tower.load_state_dict(weights, strict=False)
    missing = own - set(weights)
    if any(not k.endswith("position_ids") for k in missing):
        raise ValueError(f"missing vision weights: {sorted(missing)[:3]}")
    projector = LlavaMultiModalProjector(config)
    missing, unexpected = projector.load_state_dict(parts["projector"], strict=False)
    if missing or unexpected:
        raise ValueError(f"projector weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return VisionEncoder(
        image_processor=AutoImageProcessor.from_pretrained(str(path), local_files_only=True),
        tower=tower.to(device=device, dtype=dtype).eval(),
        projector=projector.to(device=device, dtype=dtype).eval(),
        image_token_id=int(getattr(config, "image_token_id", None) or config.image_token_index),
        feature_layer=config.vision_feature_layer,
        select_strategy=config.vision_feature_select_strategy,
        dtype=dtype,
        device=torch.device(device),
    )


def decode_image(data: bytes, max_pixels: int):
    """Pillow-decoded RGB image, or ImageError: a format outside IMAGE_FORMATS, more than max_pixels pixels
    (checked from the header, before the pixels are decoded), or a file Pillow cannot read."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(f"image is {width}x{height}, over the limit of {max_pixels} pixels")
            return img.convert("RGB")
    except ImageError:
        raise
    except Exception as err:  # untrusted bytes: whatever Pillow makes of them, the image is what is wrong
        raise ImageError(f"not a decodable image ({type(err).__name__}); accepted: {', '.join(IMAGE_FORMATS)}"
                         ) from None
