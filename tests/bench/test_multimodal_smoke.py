"""seedance.bench.multimodal end to end on the tiny LLaVA checkpoint: every figure it reports is there and sane."""

from __future__ import annotations

from seedance.bench.multimodal import main


def test_multimodal_bench_smoke(tmp_path):
    result = main(["--model-dir", str(tmp_path / "llava"), "--shape", "tiny", "--streams", "2", "--tokens", "8",
                   "--image-gap-s", "0.05", "--frames", "2"])
    assert result["encode"]["encode_1_ms"] > 0 and result["encode"]["encode_4_ms"] > 0
    for run in ("text_only", "with_images"):
        assert 0 < result[run]["gaps"] <= 2 * 7 and result[run]["itl_p99_ms"] >= result[run]["itl_p50_ms"] > 0
    assert result["with_images"]["images_sent"] >= 1
    vision = result["streaming_vision"]
    assert len(vision["session_ms"]) == len(vision["resend_ms"]) == 2
