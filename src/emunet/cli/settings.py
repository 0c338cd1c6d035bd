"""The settings a command runs with: -c and KEY=VALUE, --data_url and --out, --from (a
fine-tuning run from a model's own settings) and --resume (the run's own config.yaml)."""

from __future__ import annotations

def _config(args):
    """Settings from -c and KEY=VALUE; a resumed run without -c takes its own config.yaml (a
    run stopped before it started has none: then the defaults and KEY=VALUE)."""
    from ..io import storage
    from ..config import data_url_overrides, load_config
    from ..errors import UsageError

    overrides = list(args.overrides)
    if getattr(args, "data_url", None):  # KEY=VALUE given beside it still wins
        overrides[:0] = data_url_overrides(args.data_url)
    if getattr(args, "out", None):
        overrides.append(f"out_dir={args.out}")
    if getattr(args, "start", None):
        return _fine_tune_config(args, overrides)
    if _resuming(args) and args.config is None:
        given = load_config(None, overrides)
        storage.use(given.storage)
        saved = _saved_config(str(given.out_dir).rstrip("/"), args)
        if saved:  # the folder is where it is now, whatever the saved config says
            return load_config(storage.local_copy(saved), [*overrides, f"out_dir={given.out_dir}"])
        if not args.overrides:  # a run stopped before it started has no config.yaml: its settings must be given
            raise UsageError(f"{given.out_dir}: no run to resume here (no config.yaml); give its folder with --out, "
                             "or its settings with -c or KEY=VALUE")
    cfg = load_config(args.config, overrides)
    storage.use(cfg.storage)
    return cfg


def _fine_tune_config(args, overrides: list[str]):
    from ..errors import UsageError
    from ..io import storage
    from ..train.finetune import fine_tune_config

    if args.config is not None or _resuming(args):
        raise UsageError("--from starts a fine-tuning run from the model's own settings: give KEY=VALUE instead of -c; "
                         "to continue a stopped one, use --resume without --from")
    cfg = fine_tune_config(args.start, overrides)
    storage.use(cfg.storage)
    return cfg


def _saved_config(out_dir: str, args) -> str | None:
    """The config.yaml a resumed command continues with: the run's own; for cv, the first fold's
    (folds differ only in data.fold, which cv sets)."""
    from ..io import storage

    candidates = [f"{out_dir}/config.yaml"]
    if args.command == "cv":
        candidates += [f"{out_dir}/fold{k.strip()}/config.yaml" for k in args.folds.split(",") if k.strip()]
    return next((c for c in candidates if storage.exists(c)), None)


def _resuming(args) -> str | bool:
    """What train() resumes from: a checkpoint path, True (the newest in the folder) or False."""
    if getattr(args, "resume_from", None):
        return str(args.resume_from)
    return bool(getattr(args, "resume", False))
