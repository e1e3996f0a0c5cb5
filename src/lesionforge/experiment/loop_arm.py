"""The ``closed-loop`` experiment arm: the loop bound to the sweep's own stages, data and budget.

The arm reuses the generator (and filter validator) its open-loop arm trains, cached by the sweep, and only
changes what the generator is asked for. Its synthetic budget is the open-loop set's (``n_per_real`` x N, split
over the rounds) and its final segmenter trains with the run's segmentation settings, the same as every arm's;
:func:`fairness` records both and refuses a run where they differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lesionforge.data.arrays import PairArrays, load_arrays
from lesionforge.data.bands import BANDS
from lesionforge.errors import ConfigError
from lesionforge.experiment.config import ArmSettings, ExperimentConfig, resolved_generator_config
from lesionforge.experiment.stages import ExperimentData, SyntheticSet
from lesionforge.loop.conditions import TargetedMaskSource, appearance_prompts, weighted_backgrounds
from lesionforge.loop.diagnose import checkpoint_predictor, diagnose
from lesionforge.loop.rounds import run_rounds

ROUND_SEED_STRIDE = 1000  # round r of a loop draws with generator seed + 1000 (r + 1): ids never collide


def fairness(cfg: ExperimentConfig, arm: ArmSettings, n: int, segment_config: dict[str, Any]) -> dict[str, Any]:
    """The budgets of this closed-loop run and of its open-loop arm; raises :class:`ConfigError` if they differ."""
    from lesionforge.experiment.budget import ARM_FIELDS, budget_of, segment_config_for

    open_arm = cfg.arm(arm.loop.open_loop_arm)
    open_total = cfg.generators[open_arm.generator].n_per_real * n
    total = cfg.generators[arm.generator].n_per_real * n
    theirs = segment_config_for(cfg, open_arm, segment_config["seed"])
    same_data_options = all(segment_config[k] == theirs[k] for k in ARM_FIELDS)
    if total != open_total or budget_of(segment_config) != budget_of(theirs) or not same_data_options:
        raise ConfigError(f"arm {arm.name!r}: its synthetic count ({total}) or segmentation settings differ from "
                          f"open-loop arm {open_arm.name!r} ({open_total}); the comparison would not be fair")
    return {"open_loop_arm": open_arm.name, "synthetic_requested": total, "open_loop_synthetic_requested": open_total,
            "keep_share": keep_share(cfg.generators[arm.generator]) if arm.filtered else None,
            "final_steps": segment_config["steps"], "open_loop_steps": theirs["steps"],
            "round_steps": arm.loop.round_steps or segment_config["steps"]}


def keep_share(spec) -> float | None:
    """The open-loop filter's ``keep_best`` of ``n_per_real`` draws per labelled pair, as the share of each
    source's draws a round keeps: a steered round draws some pairs more often than others, so a fixed number per
    pair would keep fewer pairs in all than open loop does (or more); the same share keeps the same count. An
    open-loop filter given as a share already (``keep_share``) is that share."""
    if spec.filter is not None and spec.filter.keep_share is not None:
        return spec.filter.keep_share
    keep = spec.filter.keep_best if spec.filter is not None else None
    return None if keep is None else min(1.0, keep / spec.n_per_real)


def _kept(manifest: Path, filtered: bool, res: int, channels: int) -> PairArrays | None:
    """A round's synthetic pairs, the kept ones (:func:`~lesionforge.data.manifest.kept`) of a filtered set; None
    when a round kept none."""
    from lesionforge.data.manifest import kept, read_manifest

    rows = [s for s in read_manifest(manifest) if s.origin == "synthetic"]
    rows = kept(rows) if filtered else rows
    return load_arrays(rows, res, channels) if rows else None


class ExperimentLoopWorker:
    """:class:`~lesionforge.loop.rounds.LoopWorker` on the sweep's data and stages."""

    def __init__(self, stages, cfg: ExperimentConfig, arm: ArmSettings, segment_config: dict[str, Any], n: int,
                 data: ExperimentData, generator_dir: Path, subsets: dict[str, list[str]]):
        self.stages, self.cfg, self.arm, self.n, self.data = stages, cfg, arm, n, data
        self.segment_config, self.generator_dir, self.subsets = segment_config, generator_dir, subsets
        self.spec = cfg.generators[arm.generator]
        self.labelled = data.labelled(n)
        self.real_masks = self.labelled.masks[self.labelled.has_mask]
        self.gcfg = resolved_generator_config(cfg, self.spec)

    def train(self, sets: list[dict[str, Any]], out: Path, final: bool):
        from lesionforge.config import validate_config
        from lesionforge.segment.config import SegmentConfig
        from lesionforge.segment.train import train_segmenter

        seg = dict(self.segment_config)
        steps = self.arm.loop.round_steps
        if not final and steps is not None:  # a segmenter trained only to be diagnosed may be cheaper
            seg.update(steps=steps, val_interval=min(seg["val_interval"], steps),
                       warmup_steps=min(seg["warmup_steps"], steps // 2))
        res, ch = self.cfg.resolution, self.cfg.dataset.channels
        synth = PairArrays.concat([_kept(Path(s["manifest_path"]), s["filtered"], res, ch) for s in sets])
        if len(synth) == 0:
            synth = None
            seg["mixing"] = {"mode": "none"}
        return train_segmenter(validate_config(SegmentConfig, seg, "segment"), self.labelled, self.data.val, out,
                               synthetic=synth, resume=True, progress=True)

    def diagnose(self, run, out: Path) -> dict[str, Any]:
        seg_dir = Path(run.best_checkpoint).parent
        last = json.loads((seg_dir / "last.json").read_text(encoding="utf-8"))["folder"]
        second = checkpoint_predictor(seg_dir / last)  # disagreement between the best and the last checkpoint
        return diagnose(checkpoint_predictor(run.best_checkpoint), self.data.val, settings=self.arm.loop,
                        miss_fraction=self.cfg.miss_fraction, pool=self.data.unlabelled(self.n),
                        backgrounds=self.data.backgrounds, second=second, subsets=self.subsets)

    def synthesize(self, round_index: int, plan: dict[str, Any], diagnosis: dict[str, Any], n: int,
                   out: Path) -> dict[str, Any]:
        from lesionforge.generate.synthesize import synthesize
        from lesionforge.validate.filter import filter_manifest

        args = self.stages.synthesis_args(self.cfg, self.spec, self.n, self.data)
        kind, loop = self.gcfg.kind, self.arm.loop
        by_draw = not loop.steers_keep  # steer_by keep: draw as open loop, reweight what the filter keeps
        steered = []
        tag = {"loop_round": round_index, "targeted_bands": plan["targeted_bands"]}
        if kind in ("mask2image", "inpaint") and by_draw:
            ids = [i for i, h in zip(self.labelled.ids, self.labelled.has_mask, strict=True) if h]
            args["masks_from"] = TargetedMaskSource(plan, self.real_masks, self.cfg.resolution,
                                                    move_to_cell=kind == "mask2image" and loop.steers("position"),
                                                    tag=tag,
                                                    source=loop.mask_source, ids=ids)
            steered += [name for part, name in (("band", "size band"), ("shape", "shape"))
                        if loop.steers(part)]
            steered += ["position"] if kind == "mask2image" and loop.steers("position") else []
        elif args.get("masks_from") is not None:  # the open loop's own masks, with the round on each
            args["masks_from"] = _Tagged(args["masks_from"], tag)
        background_shares = None
        if kind == "inpaint" and self.data.backgrounds is not None and loop.steers("backgrounds") and by_draw:
            args["backgrounds"], background_shares = weighted_backgrounds(
                self.data.backgrounds, diagnosis["uncertainty"]["backgrounds"])
            steered.append("uncertain backgrounds")
        if self.gcfg.uses_text and plan["appearance_shares"] and loop.steers("appearance") and by_draw:
            from lesionforge.generate.textcond import prompt_function

            args["prompts"] = appearance_prompts(plan, prompt_function(self.gcfg))
            steered.append("appearance prompts")
        args.update(n=n, seed=self.spec.seed + ROUND_SEED_STRIDE * (round_index + 1))
        samples = synthesize(self.generator_dir, out / "synthetic", **args, resume=True, progress=True)
        made = {"n_generated": len(samples), "steered": steered, "generator_kind": kind, "seed": args["seed"],
                "background_shares": background_shares}
        manifest = out / "synthetic" / "manifest.jsonl"
        filtered = self.arm.filtered and self.spec.filter is not None
        if filtered:
            weights = None
            if not by_draw:
                weights, groups = self._keep_weights(manifest, plan, kind)
                made["steered"] = [f"kept pairs by {p}" for p in ("band", "shape", "position", "appearance")
                                   if loop.steers(p) and (p != "position" or kind == "mask2image")]
            validator = self.stages.validator_for(self.cfg, self.spec, self.n, self.data)
            report = filter_manifest(manifest, validator, out / "filtered.jsonl", threshold=self.spec.filter.threshold,
                                     val=self.data.val, overwrite=True, auto_rule=self.spec.filter.auto_rule,
                                     keep_share=keep_share(self.spec), keep_weights=weights)
            manifest = out / "filtered.jsonl"
            made["filter"] = {k: v for k, v in report.to_dict().items() if k != "rejected_ids"}
            made["n_kept"] = int(made["filter"]["n_kept"])
            if weights is not None:
                made["kept_by_band"] = _kept_by_band(manifest, groups["band"])
        else:
            made["n_kept"] = len(samples)
        return {"manifest": str(manifest), "filtered": filtered, **made}

    def _keep_weights(self, manifest: Path, plan: dict[str, Any], kind: str) -> tuple[Any, dict[str, list]]:
        """The keep weights of a round's made pairs, in manifest order (``steer_by: keep``)."""
        from lesionforge.data.manifest import read_manifest
        from lesionforge.loop.conditions import keep_weights

        rows = [s for s in read_manifest(manifest) if s.origin == "synthetic"]
        arrays = load_arrays(rows, self.cfg.resolution, self.cfg.dataset.channels)
        return keep_weights(plan, arrays.images, arrays.masks, position=kind == "mask2image"
                            and self.arm.loop.steers("position"), max_gain=self.arm.loop.max_gain)


class _Tagged:
    """A mask source with ``tag`` added to every mask's provenance (a class, not a closure: it pickles, as a
    source sent to synthesis shards must)."""

    def __init__(self, source, tag: dict[str, Any]):
        self.source, self.tag = source, tag

    def __call__(self, rng, n: int) -> list:
        return [(mask, {**info, **self.tag}) for mask, info in self.source(rng, n)]

    @property
    def even(self) -> bool:
        """Whether the wrapped source draws its masks evenly by sample index (synthesis then asks :meth:`draw_at`)."""
        return getattr(self.source, "even", False)

    def draw_at(self, rng, seed: int, index: int) -> tuple:
        mask, info = self.source.draw_at(rng, seed, index)
        return mask, {**info, **self.tag}


def _kept_by_band(filtered: Path, bands: list[str | None]) -> dict[str, dict[str, float]]:
    """Per size band: its share of the round's made pairs and of the kept ones (``bands`` in manifest order)."""
    from lesionforge.data.manifest import kept, read_manifest

    rows = [s for s in read_manifest(filtered) if s.origin == "synthetic"]
    keep = {s.id for s in kept(rows)}
    made = [b for b in bands if b is not None]
    held = [b for s, b in zip(rows, bands, strict=True) if b is not None and s.id in keep]
    return {b: {"made": made.count(b) / max(len(made), 1), "kept": held.count(b) / max(len(held), 1)}
            for b in BANDS if b in made}


def val_subsets(cfg: ExperimentConfig, data: ExperimentData) -> dict[str, list[str]]:
    """The dataset's named subsets restricted to ``val`` (the experiment keeps only their test ids)."""
    from lesionforge.segment.data import read_id_list

    val = set(data.val.ids)
    return {k: [i for i in read_id_list(p) if i in val] for k, p in cfg.dataset.subsets.items()}


def train_closed_loop(stages, cfg: ExperimentConfig, arm: ArmSettings, segment_config: dict[str, Any], n: int,
                      data: ExperimentData, open_loop: SyntheticSet | None, run_dir: Path):
    """Run (or resume) the loop of one (N, arm, seed) in ``run_dir/loop``; the final segmenter trains in
    ``run_dir/segmenter``. Returns ``(final run, loop summary)`` (the summary goes into the run record)."""
    fair = fairness(cfg, arm, n, segment_config)
    if open_loop is not None and "generator_dir" in open_loop.info:
        generator_dir = Path(open_loop.info["generator_dir"])
    else:  # no open-loop set made (a test's fake stages): train or reuse the cached generator directly
        generator_dir = stages.generator_for(cfg, cfg.generators[arm.generator], n, data, run_dir / "no-synthetic")
    worker = ExperimentLoopWorker(stages, cfg, arm, segment_config, n, data, generator_dir, val_subsets(cfg, data))
    from rich.console import Console

    console = Console(stderr=True)
    return run_rounds(run_dir / "loop", arm.loop, fair["synthetic_requested"], worker, final_dir=run_dir / "segmenter",
                      meta={"fairness": fair, "generator": arm.generator}, log=console.print)
