"""Helpers shared by test modules (pytest puts tests/ on sys.path: `from helpers import ...`)."""

import torch

from dakd.models import load_model


def weights(folder):
    """State dict of the model saved in ``folder``."""
    return load_model(folder).state_dict()


def assert_same_weights(a, b, atol=0.0):
    """Two state dicts have the same tensor names and values (within ``atol``, no relative slack)."""
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def record_model_loads(monkeypatch, module) -> list[str]:
    """Wrap ``module.load_model`` (e.g. `dakd.train`'s), and the one `dakd.models.load_frozen` and
    the checkpoint loader (`dakd.runstate`) call, so that every name loaded is appended to the
    returned list; the models still load."""
    import dakd.models
    import dakd.runstate

    loaded: list[str] = []
    real = dakd.models.load_model

    def spy(name, *a, **kw):
        loaded.append(str(name))
        return real(name, *a, **kw)
    for m in {module, dakd.models, dakd.runstate}:
        monkeypatch.setattr(m, "load_model", spy)
    return loaded


def wrap_objectives(monkeypatch, wrap) -> None:
    """Route every objective call of the training loop through ``wrap(call, student, batch,
    sample_ids) -> (per_tok, teacher_rows)``, where ``call(student, batch, sample_ids)`` is the real
    objective (`dakd.methods.objectives`): to spy on the micro-batches or corrupt their losses."""
    from dakd.methods import objectives

    for cls in set(objectives.OBJECTIVES.values()):
        real = cls.__call__

        def patched(self, student, batch, sample_ids, _real=real):
            return wrap(lambda s, b, i: _real(self, s, b, i), student, batch, sample_ids)
        monkeypatch.setattr(cls, "__call__", patched)


def spy_batches(monkeypatch) -> list[dict]:
    """Record every micro-batch the training loop's objective sees (collated dicts, in order)."""
    seen: list[dict] = []

    def wrap(call, student, batch, sample_ids):
        seen.append(batch)
        return call(student, batch, sample_ids)
    wrap_objectives(monkeypatch, wrap)
    return seen
