"""verify's verdict on memory (autofit.verify.judge), on figures measured on the GPU machine."""

from autofit.verify import judge


def test_a_peak_under_the_probe_with_the_same_live_tensors_passes():
    # 2 x H200, Qwen2-1.5B full/bf16/nockpt/z2 mb 16 (results/bench-2xh200-qwen2-1.5b-full-T1024): the
    # probe's worker had run mb 1 first, so its allocator held 5.8 GiB more cache than HF Trainer's.
    assert judge(98.504, 104.318, 85.982, 85.995, 140.401, 0.05) == []


def test_a_peak_under_the_probe_with_different_live_tensors_fails():
    (problem,) = judge(90.0, 104.318, 70.0, 85.995, 140.401, 0.05)
    assert "under the probe's" in problem and "did not train what HF Trainer trains" in problem


def test_without_allocated_figures_a_low_peak_still_fails():
    (problem,) = judge(98.504, 104.318, None, None, 140.401, 0.05)
    assert "no allocated figures" in problem


def test_a_peak_over_the_probe_fails_whatever_allocated_says():
    # 2 x H200, GLM-4-9B full/bf16/ckpt/z2 mb 2 (results/search-2xh200-glm4-full-T1024): +6.2%.
    (problem,) = judge(134.07, 126.262, 110.0, 110.0, 140.4, 0.05)
    assert "over the probe's" in problem and "headroom" in problem


def test_over_the_budget_fails_and_within_tolerance_passes():
    assert any("exceeds the budget" in p for p in judge(25.0, 24.5, 20.0, 20.0, 24.0, 0.05))
    assert judge(22.0, 21.5, 20.0, 20.0, 24.0, 0.05) == []
    assert judge(22.0, 21.5, None, None, 24.0, 0.05) == []
