"""Commands of the generate stage: ``train generator`` and ``synthesize``."""

from __future__ import annotations

from pathlib import Path

import typer

from lesionforge.devices import DEVICE_HELP


def _own(field: str) -> str:
    """How a sampling option relates to the generator's settings (the precedence, said in each option's help)."""
    return f"Given: wins. Default: the generator's own `{field}` (from the preset it was trained with)."


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    """Add this stage's commands: ``train generator`` (old spelling ``train-generator`` kept, hidden) and
    ``synthesize``."""

    def train_generator_cmd(
        config: Path = typer.Argument(..., help="Generator config YAML, or a packaged preset name, e.g. "
                                      "generator-mask2image-kvasir-cpu.yaml."),
        data: Path = typer.Option(..., help="Labelled dataset folder or manifest.jsonl."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (checkpoints, samples, final model)."),
        split: str = typer.Option(None, help="Benchmark split file or name; selects train ids."),
        labelled: int = typer.Option(None, help="Use the N-image low-data subset of the split as labelled set."),
        backgrounds: Path = typer.Option(None, help="Lesion-free images (inpaint self-supervision)."),
        prompts: Path = typer.Option(None, help="User prompt file (YAML or CSV) for text-conditioned kinds."),
        steps: int = typer.Option(None, help="Override the number of training steps."),
        autoencoder: Path = typer.Option(None, help="LatentCodec folder: train in latent space."),
        resume: bool = typer.Option(True, help="Continue from the latest checkpoint in --out."),
        device: str = typer.Option(None, help=DEVICE_HELP),
    ) -> None:
        """Train a generator (mask2image, joint, edge-text or inpaint) from a YAML preset."""
        from lesionforge.devices import end_processes
        from lesionforge.generate.run import train_from_files

        train_from_files(config, data, out, split=split, labelled=labelled, backgrounds=backgrounds,
                         prompts=prompts, steps=steps, autoencoder=autoencoder, resume=resume, device=device)
        end_processes()  # under `accelerate launch`: each rank leaves its process group before it exits

    train_app.command("generator")(train_generator_cmd)
    app.command("train-generator", hidden=True)(train_generator_cmd)

    @app.command("synthesize")
    def synthesize_cmd(
        generator: Path = typer.Argument(..., help="Trained generator folder."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder: images/, masks/, manifest.jsonl."),
        n: int = typer.Option(..., help="Number of samples."),
        data: Path = typer.Option(None, help="Real labelled pairs: mask source / edge-text conditions."),
        split: str = typer.Option(None, help="Benchmark split: restrict --data to its (low-data) train ids."),
        labelled: int = typer.Option(None, help="Low-data subset size of the split."),
        backgrounds: Path = typer.Option(None, help="Lesion-free images to paint into (inpaint)."),
        mask_source: str = typer.Option("jitter", help="'jitter' (real masks deformed) or 'size' (size-controlled)."),
        repaint_share: float = typer.Option(0.0, min=0.0, max=1.0, help="Inpaint: share of samples painted onto "
                                            "the --data image their jittered mask comes from (its lesion repainted)."),
        paste_strength: float = typer.Option(0.0, min=0.0, max=1.0, help="Inpaint: start each sample from a --data "
                                             "lesion pasted onto a background, re-drawn from this noise level "
                                             "(SDEdit; 0: off, masks from --mask-source)."),
        seed: int = typer.Option(0, help="Run seed: same seed, same output."),
        sampler: str = typer.Option(None, help=f"ddim, dpm++, sde-dpm++ or ddpm. {_own('sampler')}"),
        steps: int = typer.Option(None, help=f"Sampling steps. {_own('sample_steps')}"),
        guidance_scale: float = typer.Option(None, help=f"Classifier-free guidance scale. {_own('guidance_scale')}"),
        repaint_jumps: int = typer.Option(None, help=f"RePaint rounds per step (inpaint). {_own('repaint_jumps')}"),
        eta: float = typer.Option(None, help="DDIM stochasticity in [0, 1] (default 0: deterministic)."),
        mask_guidance: bool = typer.Option(False, help="Guidance weighs the mask against 'mask unknown' too "
                                           "(mask2image / edge-text generators pretrained without masks)."),
        guidance_region: int = typer.Option(None, min=0, help="Guidance only within this many pixels of the mask "
                                            "(default: everywhere)."),
        batch_size: int = typer.Option(16, help="Samples per batch."),
        prompts: Path = typer.Option(None, help="User prompt file (YAML or CSV)."),
        resume: bool = typer.Option(True, help="Skip samples already in the manifest."),
        overwrite: bool = typer.Option(False, help="Start over in a non-empty --out."),
        executor: str = typer.Option("local", "--executor", help="'local' or 'ray' (shards as Ray tasks)."),
        address: str = typer.Option(None, "--address", help="Ray cluster address; default: a local instance."),
        shards: int = typer.Option(None, "--shards", min=1, help="Ray: shards (default: one per cluster CPU)."),
        gpus_per_task: float = typer.Option(None, "--gpus-per-task", min=0.0,
                                            help="Ray: GPUs per shard (default: 1 on a cluster with GPUs)."),
        max_retries: int = typer.Option(3, "--max-retries", min=0, help="Ray: reruns of a failed or lost shard."),
    ) -> None:
        """Draw N labelled synthetic pairs from a trained generator (`--executor ray`: sharded by sample index
        over a Ray cluster, the same files as one process). Sampling settings: an option given here wins, else
        the generator's own (from the preset it was trained with)."""
        from lesionforge.config import validate_config
        from lesionforge.generate.config import SamplingConfig
        from lesionforge.generate.run import synthesize_from_files

        given = {"sampler": sampler, "steps": steps, "guidance_scale": guidance_scale, "repaint_jumps": repaint_jumps,
                 "eta": eta, "mask_guidance": mask_guidance or None, "guidance_region": guidance_region}
        sampling = validate_config(SamplingConfig, given, "synthesize options")
        synthesize_from_files(generator, out, n, data=data, split=split, labelled=labelled, backgrounds=backgrounds,
                              mask_source=mask_source, seed=seed, sampling=sampling, batch_size=batch_size,
                              prompts=prompts, resume=resume, overwrite=overwrite, executor=executor,
                              repaint_share=repaint_share, paste_strength=paste_strength,
                              ray_options={"address": address, "shards": shards, "gpus_per_task": gpus_per_task,
                                           "max_retries": max_retries})
