import pytest
import torch

from tunedet.engine.finite_guard import NonFiniteLossError, check_finite_loss, is_finite_loss


def test_finite_loss_passes_silently():
    check_finite_loss({"cls": torch.tensor(0.3), "box": torch.tensor(0.4)}, 5, None)
    assert is_finite_loss({"cls": torch.tensor(0.3)})


def test_nan_loss_message_names_iteration_terms_and_checkpoint():
    terms = {"cls": torch.tensor(float("nan")), "box": torch.tensor(0.412)}
    ckpt = "runs/x/checkpoints/iter_0000100.pt"
    with pytest.raises(NonFiniteLossError) as info:
        check_finite_loss(terms, 123, ckpt)
    assert str(info.value) == (
        "loss became nan at iteration 123 (cls=nan, box=0.412); "
        "last good checkpoint: runs/x/checkpoints/iter_0000100.pt"
    )
    assert info.value.iteration == 123
    assert info.value.last_checkpoint == ckpt


def test_inf_loss_without_checkpoint_says_none_written_yet():
    terms = {"cls": torch.tensor(0.5), "box": torch.tensor(float("inf"))}
    with pytest.raises(NonFiniteLossError) as info:
        check_finite_loss(terms, 7, None)
    message = str(info.value)
    assert message.startswith("loss became inf at iteration 7 (cls=0.5, box=inf)")
    assert message.endswith("last good checkpoint: none written yet")
    assert "\n" not in message


def test_non_finite_loss_error_is_a_runtime_error():
    assert issubclass(NonFiniteLossError, RuntimeError)
    assert not is_finite_loss({"a": torch.tensor(1.0), "b": torch.tensor(float("-inf"))})
