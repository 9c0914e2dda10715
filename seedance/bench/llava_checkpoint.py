"""Randomly initialised LLaVA checkpoints (transformers config + save_pretrained, no download) for the tests and
the multimodal benchmark: a Llama text model over the built-in tokenizer plus an `<image>` token, a CLIP vision
tower and the MLP projector. TINY (the tests' oracle): 2+2 layers, 32x32 images in 8x8 patches, 16 feature rows
per image. BENCH: a ViT-B/16 tower at 224 px (196 rows per image) and a SmolLM2-135M-shaped language model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from seedance.models.loader import BUILTIN_MODEL_DIR

IMAGE_TOKEN = "<image>"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


TINY = {
    "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512),
    "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                   patch_size=8),
}
BENCH = {
    "text": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, max_position_embeddings=8192),
    "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   image_size=224, patch_size=16),
}


def build_llava(path: Path, shape: dict = TINY, seed: int = 0) -> Path:
    from tokenizers import AddedToken, Tokenizer
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.from_file(str(BUILTIN_MODEL_DIR / "tokenizer.json"))
    tokenizer.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    image_token_id = tokenizer.token_to_id(IMAGE_TOKEN)
    tokenizer.save(str(path / "tokenizer.json"))
    config = json.loads((BUILTIN_MODEL_DIR / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    shutil.copy(BUILTIN_MODEL_DIR / "generation_config.json", path / "generation_config.json")
    side = shape["vision"]["image_size"]
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(path)

    torch.manual_seed(seed)
    text = LlamaConfig(vocab_size=image_token_id + 1, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
                       pad_token_id=0, **shape["text"])
    vision = CLIPVisionConfig(**shape["vision"])
    rows = (side // shape["vision"]["patch_size"]) ** 2
    llava = LlavaConfig(text_config=text, vision_config=vision, image_token_index=image_token_id,
                        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=rows)
    model = LlavaForConditionalGeneration(llava).eval()
    if shape is TINY:
        with torch.no_grad():  # random init is near zero: widen it so different images give different answers
            for p in model.parameters():
                p.mul_(4.0 if p.dim() > 1 else 1.0)
    model.save_pretrained(path)
    return path
