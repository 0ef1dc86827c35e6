import pytest


@pytest.fixture
def compiled_ops(monkeypatch):
    """The compiled CPU ops enabled for one test, as a training process enables them; off again after.

    The build itself is kept for the session (the first one takes ~40 s); only the
    process-wide "enabled" flag is put back, so other tests see the default (off)."""
    from avatar3d import native

    monkeypatch.setenv("AVATAR3D_NATIVE_OPS", "1")
    monkeypatch.setattr(native, "_enabled", native._enabled)
    assert native.enable_training_ops("cpu"), "the compiled tri-plane kernel did not build"
    return native.training_ops()
