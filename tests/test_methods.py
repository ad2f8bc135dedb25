"""Per-method answers worked out by hand from each paper's equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmerge.methods import merge_trees, parameter_key
from jaxmerge.methods.breadcrumbs import breadcrumbs
from jaxmerge.methods.dare import dare_linear
from jaxmerge.methods.della import della, keep_probability
from jaxmerge.methods.linear import average, task_arithmetic
from jaxmerge.methods.model_stock import model_stock
from jaxmerge.methods.slerp import slerp
from jaxmerge.methods.ties import dare_ties, ties

f32 = lambda *values: jnp.asarray(values, jnp.float32)


def close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want, np.float32), rtol=1e-6, atol=1e-7)


def test_average_weighted():
    # (1·[1, 2] + 3·[3, 6]) / 4 = [2.5, 5]
    close(average([f32(1, 2), f32(3, 6)], weights=[1.0, 3.0]), [2.5, 5.0])


def test_task_arithmetic():
    # τ = [1, −1], [0, 2]; θ₀ + ½ (τ₁ + τ₂) = [1, 1] + ½ [1, 1]
    close(task_arithmetic([f32(2, 0), f32(1, 3)], base=f32(1, 1), lam=0.5), [1.5, 1.5])


def test_ties_trim_elect_disjoint_mean():
    # density ½ of 4 entries: k = 2, tᵢ = 2nd largest |τᵢ| = 2 for every expert:
    # τ̂₁ = [3, −2, 0, 0], τ̂₂ = [0, −4, 2, 0], τ̂₃ = [2, 0, −3, 0]
    # Σ = [5, −6, −1, 0] → γ = [+, −, −, +]  (0 elects +)
    # agreeing means: [(3+2)/2, (−2−4)/2, −3/1, 0/max(1,0)] = [2.5, −3, −3, 0]
    experts = [f32(3, -2, 1, 0.5), f32(-1, -4, 2, 0.1), f32(2, 1, -3, 0.2)]
    close(ties(experts, base=f32(0, 0, 0, 0), density=0.5), [2.5, -3.0, -3.0, 0.0])


def test_ties_sign_tie_elects_plus():
    # τ = [1], [−1] at density 1: Σ = 0 → γ = +1 → only the +1 agrees → θ = 1
    close(ties([f32(1.0), f32(-1.0)], base=f32(0.0), density=1.0), [1.0])


def test_ties_threshold_ties_are_all_kept():
    # density ¼ of 4: k = 1, t = 2; all three entries equal to 2 are kept.
    close(ties([f32(2, -2, 2, 1)], base=f32(0, 0, 0, 0), density=0.25), [2.0, -2.0, 2.0, 0.0])


def test_ties_weights_scale_before_election():
    # τ₁ = [1], τ₂ = [−1] with w = [1, 3]: τ̂ = [1], [−3] → γ = − → θ = −3
    close(ties([f32(1.0), f32(-1.0)], base=f32(0.0), density=1.0, weights=[1.0, 3.0]), [-3.0])


def test_ties_global_trim_spans_all_parameters():
    # expert τ: a = [10, 9], b = [1, 2]; density ½ of 4 entries → k = 2.
    base = {"a": f32(0, 0), "b": f32(0, 0)}
    expert = {"a": f32(10, 9), "b": f32(1, 2)}
    global_trim = merge_trees("ties", [expert], base=base, density=0.5)  # t = 9
    close(global_trim["a"], [10, 9])
    close(global_trim["b"], [0, 0])
    tensor_trim = merge_trees("ties", [expert], base=base, density=0.5, trim="tensor")
    close(tensor_trim["a"], [10, 0])  # k = 1 per tensor
    close(tensor_trim["b"], [0, 2])


def test_dare_linear_drops_and_rescales():
    base = jnp.zeros(20000)
    expert = jnp.full(20000, 0.5)
    out = np.asarray(dare_linear([expert], base=base, key=jax.random.key(0), drop_rate=0.75))
    assert set(np.unique(out)) == {0.0, 2.0}  # 0.5 / (1 − 0.75)
    assert abs(np.mean(out == 0.0) - 0.75) < 0.02
    # p = 0 keeps everything: task arithmetic.
    close(dare_linear([expert], base=base, key=jax.random.key(0), drop_rate=0.0), expert)


def test_dare_masks_are_keyed_by_parameter_name_and_expert():
    base = {"x": jnp.zeros(64), "y": jnp.zeros(64)}
    expert = {"x": jnp.ones(64), "y": jnp.ones(64)}
    out = merge_trees("dare_linear", [expert, expert], base=base, drop_rate=0.5, seed=7)
    key = parameter_key(7, "x")
    by_hand = dare_linear([expert["x"]] * 2, base=base["x"], key=key, drop_rate=0.5)
    close(out["x"], by_hand)
    assert np.any(np.asarray(out["x"]) != np.asarray(out["y"]))  # names give different masks


def test_dare_ties_elects_after_the_drop():
    # p = 0: no drop, so DARE-TIES equals TIES at density 1.
    experts = [f32(3, -2, 1), f32(-1, -4, 2)]
    key = jax.random.key(0)
    close(
        dare_ties(experts, base=f32(0, 0, 0), key=key, drop_rate=0.0),
        ties(experts, base=f32(0, 0, 0), density=1.0),
    )


def test_breadcrumbs_removes_outliers_and_small_entries():
    # |τ| = 1..10, γ = 0.1 → drop the largest (10); density ½ → keep the next 5: 9..5
    tau = f32(*range(1, 11))
    out = breadcrumbs([tau], base=jnp.zeros(10), density=0.5, gamma=0.1)
    close(out, [0, 0, 0, 0, 5, 6, 7, 8, 9, 0])


def test_della_keep_probability_follows_magnitude_rank():
    # row [0.1, −3, 2]: ascending ranks [0, 2, 1] → scaled [0, 1, ½]
    q = keep_probability(f32(0.1, -3.0, 2.0), density=0.5, epsilon=0.2)
    close(q, [0.3, 0.7, 0.5])
    # rows are ranked independently
    q2 = keep_probability(jnp.asarray([[1.0, 2.0], [4.0, 3.0]]), density=0.5, epsilon=0.1)
    close(q2, [[0.4, 0.6], [0.6, 0.4]])


def test_della_rescales_survivors_by_their_keep_probability():
    base = jnp.zeros((4, 1000))
    expert = jnp.ones((4, 1000))
    out = np.asarray(della([expert], base=base, key=jax.random.key(1), density=0.5, epsilon=0.0))
    assert set(np.unique(out)) == {0.0, 2.0}
    assert abs(np.mean(out == 2.0) - 0.5) < 0.03


def test_model_stock_interpolation_ratio():
    base = f32(0, 0)
    # orthogonal task vectors: cos = 0 → t = 0 → θ₀
    close(model_stock([f32(1, 0), f32(0, 1)], base=base), [0, 0])
    # parallel: cos = 1 → t = 2·1 / (1 + 1) = 1 → the average
    close(model_stock([f32(1, 0), f32(3, 0)], base=base), [2, 0])
    # cos = 1/√2 → t = 2c / (1 + c)
    c = 1 / np.sqrt(2)
    close(model_stock([f32(1, 1), f32(1, 0)], base=base), np.array([1, 0.5]) * 2 * c / (1 + c))


def test_slerp_quarter_circle_and_linear_fallback():
    h = np.sqrt(0.5)
    close(slerp([f32(1, 0), f32(0, 1)], t=0.5), [h, h])
    close(slerp([f32(1, 0), f32(0, 1)], t=1 / 3), [np.cos(np.pi / 6), np.sin(np.pi / 6)])
    close(slerp([f32(1, 0), f32(3, 0)], t=0.25), [1.5, 0])  # parallel: lerp


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_accumulates_in_float32(dtype):
    # 1 + 3 · 2⁻⁹ is not representable in bf16; summing in bf16 would lose each 2⁻⁹.
    base = jnp.ones(4, dtype)
    expert = jnp.asarray(np.full(4, 1 + 2**-7), dtype)
    out = merge_trees("task_arithmetic", [expert] * 4, base=base, lam=0.25)
    assert out.dtype == dtype
    close(out.astype(jnp.float32), np.full(4, 1 + 2**-7))
