"""Train Seedance's built-in model: a small Llama-architecture causal LM on the King James Bible.

The model ships inside the package (seedance/models/tiny) so the server works offline on a fresh
machine. Everything here is reproducible on a 2-core CPU within a wall-clock budget:

    python scripts/train_tiny_model.py --minutes 24

Corpus: data/kjv.txt.gz, the output of `bible -f Gen1:1-Rev22:21` from Debian's `bible-kjv`
package. The King James text (1611) is in the public domain.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import re
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "kjv.txt.gz"
OUT = ROOT / "seedance" / "models" / "tiny"
EOS = "<|endoftext|>"
# The model never saw role markers, so a chat is rendered as plain prose it can continue.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}"
    "{% if not loop.last %}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}\n{% endif %}"
)
VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def load_chapters(path: Path) -> list[str]:
    """One document per chapter, verse references stripped, verses joined as prose."""
    chapters: dict[tuple[str, str], list[str]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            match = VERSE.match(line.strip())
            if match:
                book, chapter, _, text = match.groups()
                chapters.setdefault((book, chapter), []).append(text)
    return [" ".join(verses) for verses in chapters.values()]


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode_corpus(tokenizer: PreTrainedTokenizerFast, docs: list[str]) -> torch.Tensor:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for encoded in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def batch_from(data: torch.Tensor, batch: int, seq: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
    return torch.stack([data[s : s + seq + 1] for s in starts.tolist()])


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, data: torch.Tensor, seq: int, batches: int = 8) -> float:
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    losses = []
    for _ in range(batches):
        x = batch_from(data, 16, seq, gen)
        losses.append(model(input_ids=x[:, :-1], labels=x[:, :-1].clone()).loss.item())
    model.train()
    return sum(losses) / len(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--minutes", type=float, default=24.0, help="wall-clock training budget")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=704)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    t0 = time.time()
    docs = load_chapters(CORPUS)
    random.Random(args.seed).shuffle(docs)
    n_val = max(1, len(docs) // 50)
    tokenizer = train_tokenizer(docs, args.vocab)
    train_ids = encode_corpus(tokenizer, docs[n_val:])
    val_ids = encode_corpus(tokenizer, docs[:n_val])
    print(
        f"{len(docs)} chapters, {len(train_ids)} train / {len(val_ids)} val tokens, "
        f"tokenizer in {time.time() - t0:.1f}s",
        flush=True,
    )

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60
    warmup = 100
    start = time.time()
    step, loss_ema = 0, None
    model.train()
    while True:
        elapsed = time.time() - start
        if elapsed >= budget:
            break
        # Cosine schedule over the wall-clock budget, not a step count, so any machine finishes on time.
        progress = elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optim.param_groups:
            group["lr"] = lr
        x = batch_from(train_ids, args.batch, args.seq, gen)
        loss = model(input_ids=x[:, :-1], labels=x[:, :-1].clone()).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        step += 1
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if step % 50 == 0:
            tps = step * args.batch * args.seq / (time.time() - start)
            print(
                f"step {step} loss {loss_ema:.3f} lr {lr:.2e} {tps:.0f} tok/s {(time.time() - start) / 60:.1f} min",
                flush=True,
            )

    train_minutes = (time.time() - start) / 60
    val_loss = evaluate(model, val_ids, args.seq)
    print(
        f"done: {step} steps in {train_minutes:.1f} min, train loss {loss_ema:.3f}, "
        f"val loss {val_loss:.3f} (ppl {math.exp(val_loss):.1f})",
        flush=True,
    )

    model.eval()
    prompt = "And God said"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    sample_ids = model.generate(ids, max_new_tokens=60, do_sample=False)
    sample = tokenizer.decode(sample_ids[0], skip_special_tokens=True)
    print(f"sample (greedy): {sample}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    report = {
        "parameters": n_params,
        "steps": step,
        "tokens_seen": step * args.batch * args.seq,
        "train_minutes": round(train_minutes, 2),
        "train_loss": round(loss_ema, 4),
        "val_loss": round(val_loss, 4),
        "val_perplexity": round(math.exp(val_loss), 2),
        "sample_prompt": prompt,
        "sample_greedy": sample,
        "args": {k: str(v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
