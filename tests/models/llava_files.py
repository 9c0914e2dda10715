"""A tiny randomly initialised LLaVA checkpoint, built in the tests (transformers config + save_pretrained, no
download): a 2-layer Llama text model over the built-in tokenizer plus an `<image>` token, a 2-layer CLIP vision
tower (32x32 images, 8x8 patches: 16 feature rows per image) and the MLP projector."""

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


def build_tiny_llava(path: Path, seed: int = 0) -> Path:
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
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)

    torch.manual_seed(seed)
    text = LlamaConfig(vocab_size=image_token_id + 1, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    llava = LlavaConfig(text_config=text, vision_config=vision, image_token_index=image_token_id,
                        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=16)
    model = LlavaForConditionalGeneration(llava).eval()
    with torch.no_grad():  # random init is near zero: widen it so different images give different answers
        for p in model.parameters():
            p.mul_(4.0 if p.dim() > 1 else 1.0)
    model.save_pretrained(path)
    return path
