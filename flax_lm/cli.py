"""The `flax-lm` command line. User mistakes print one line and exit 2; `compile` exits 3 when the
program does not fit the chips."""

import argparse
import os
import sys
from pathlib import Path

from flax_lm.backends import startup
from flax_lm.errors import UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flax-lm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = _configured(sub, "train", "train or resume a run")
    p.add_argument("--workdir", required=True, help="the run's directory; an existing one is resumed")
    multi = p.add_argument_group("multi-process runs (else the FLAX_LM_COORDINATOR, FLAX_LM_NUM_PROCESSES and "
                                 "FLAX_LM_PROCESS_ID variables; on TPU VMs none is needed)")
    multi.add_argument("--coordinator", default=None, help="HOST:PORT of process 0, the same for every process")
    multi.add_argument("--num-processes", type=int, default=None, help="processes in the run")
    multi.add_argument("--process-id", type=int, default=None, help="this process, 0 .. num-processes - 1")

    p = sub.add_parser("evaluate", help="loss and task metrics of a run's checkpoint on a split; saved in the workdir")
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the best, else the latest)")
    p.add_argument("--split", default="validation", choices=("validation", "dev", "test", "train"),
                   help="dev is validation")

    p = sub.add_parser("predict", help="label the text of a file with a fine-tuned run")
    p.add_argument("--workdir", required=True)
    p.add_argument("--input", required=True, help="classification: .csv/.tsv/.jsonl/.parquet (a CSV/TSV with a "
                                                   "header, or label and text columns), or .txt, one text a line; "
                                                   "NER: CoNLL; QA: SQuAD .json; seq2seq: .txt, one source a line, "
                                                   "or a table")
    p.add_argument("--output", required=True, help="its extension says the format: .jsonl JSON lines, .tsv/.csv a "
                                                    "table, .txt one prediction a line (NER: CoNLL; also .conll), "
                                                    "QA's .json {id: answer}")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the best, else the latest)")

    p = sub.add_parser("generate", help="continue prompts with a run's checkpoint (settings default to its "
                                        "config's sample section)")
    p.add_argument("--workdir", required=True)
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="one prompt; its tokens are printed as they are made")
    prompt.add_argument("--input", help="a text file with one prompt a line, decoded together as one batch")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    for flag, kind, what in _GENERATION_FLAGS:
        p.add_argument(flag, type=kind, default=None, help=what)

    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face transformers model directory")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="the directory to write")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the best, else the latest)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--merge", action="store_true",
                   help="a LoRA run: write a plain model with the adapters merged (default: a PEFT adapter directory)")

    p = _configured(sub, "compile", "compile a config's train step for a TPU topology (no TPU needed) and "
                                    "report memory per chip, whether it fits and the modelled step time and MFU")
    p.epilog += f" Exits 0 when it fits, {COMPILE_DOES_NOT_FIT} when it does not, 2 on a user mistake."
    p.add_argument("--topology", required=True, help="a TPU topology: gcloud's or MaxText's accelerator type "
                   "(v5e-8 = v5litepod-8, v6e-8; v5p-8 and v4-8 count TensorCores, so v5p-8 is 4 chips) or "
                   "libtpu's GENERATION:SHAPE (v5e:2x4, v5p:2x2x1)")
    p.add_argument("--num-slices", type=int, default=1, help="slices of that topology (multi-slice)")
    p.add_argument("--json", default=None, help="also write the report here")
    p.add_argument("--no-model-step", action="store_true", help="memory and fit only: skip the modelled step (a "
                   "second compile, with the layers unrolled, when the program has loops)")

    p = _configured(sub, "prepare", "tokenize a config's pre-training text once into a token store, "
                                    "read with --config.data.source=tokens:OUT")
    p.add_argument("--out", required=True, help="the store's directory")
    p.add_argument("--part", type=int, default=0, help="the part this process writes, 0 .. parts - 1")
    p.add_argument("--parts", type=int, default=1, help="processes (or machines) that write the store, one part each")

    p = _configured(sub, "config", "print a recipe's config with its overrides applied, or list the keys that "
                                   "match --keys with their types, defaults and help", required=False)
    p.add_argument("--keys", default=None, metavar="PATTERN",
                   help="list the keys whose name contains PATTERN (or matches it as a glob: 'optim.*')")

    p = sub.add_parser("import", help="make a workdir from a Hugging Face model directory or hub id")
    p.add_argument("--hf", required=True, help="a local model directory or a hub id")
    p.add_argument("--workdir", required=True, help="a new directory")
    p.add_argument("--task", default=None, help="a task head to put on a base model (e.g. classification); without "
                                                "it a base model (BertModel, GPT2Model, LlamaModel) is imported as "
                                                "itself, for flax-lm embed and export")
    p.add_argument("--peft", default=None, metavar="ADAPTER_DIR",
                   help="a PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) trained on "
                        "the --hf model: the workdir is a LoRA run with its adapters (peft.* from its config)")

    p = sub.add_parser("embed", help="write sentence embeddings of the texts of a file (a base model's, or a "
                                     "fine-tuned run's encoder's)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--input", required=True, help=".txt, one text a line, or a .csv/.tsv/.jsonl/.parquet table "
                                                   "whose data.text_column (default: sentence) holds the texts")
    p.add_argument("--output", required=True, help="its extension says the format: .jsonl one {\"text\", "
                                                    "\"embedding\"} object a line, .npy one float32 array N x D")
    p.add_argument("--pooling", default=None, choices=("mean", "cls", "last"),
                   help="mean over the attention mask, the first ([CLS]) or the last real token's hidden state "
                        "(default: the imported sentence-transformers pipeline's, else mean)")
    p.add_argument("--normalize", default=None, action=argparse.BooleanOptionalAction,
                   help="divide each embedding by its L2 norm (default: as the imported sentence-transformers "
                        "pipeline does, else not)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the best, else the latest)")
    return parser


COMPILE_DOES_NOT_FIT = 3  # flax-lm compile's exit status for a program too big for the chips


def _configured(sub, name: str, what: str, required: bool = True) -> argparse.ArgumentParser:
    """A subcommand that takes a recipe and --config.section.key=value overrides of it."""
    p = sub.add_parser(name, help=what, epilog="Override any config key with --config.section.key=value (with '='). "
                                               "`flax-lm config --keys PATTERN` lists the keys with their types, "
                                               "defaults and help; `flax-lm config --config C [--config.k=v ...]` "
                                               "prints the config a run would use.")
    p.add_argument("--config", required=required, default=None,
                   help="a recipe file, or the name of one in configs/" + ("" if required else "; default: none, "
                                                                            "the schema's defaults"))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if a.startswith("--config.")]
    unknown = [a for a in extra if not a.startswith("--config.")]
    spaced = _spaced_override(extra)
    if spaced:
        print(f"flax-lm {args.command}: error: {spaced}", file=sys.stderr)
        return 2
    if unknown or (overrides and args.command not in ("train", "compile", "prepare", "config")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    try:
        if getattr(args, "workdir", None) is not None:
            from flax_lm.workdir.layout import local
            local(args.workdir)
        return COMMANDS[args.command](args, overrides)
    except UserError as e:
        for line in str(e).splitlines() or [""]:  # a config with several problems has a line for each
            print(f"flax-lm {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flax-lm {args.command}: interrupted", file=sys.stderr)
        return 130


def _spaced_override(extra: list[str]) -> str:
    """The hint for an override written with a space (`--config.train.steps 60`), else ""."""
    for arg, following in zip(extra, extra[1:] + [""]):
        if arg.startswith("--config.") and "=" not in arg:
            value = following if following and not following.startswith("--") else "VALUE"
            return f"{arg}: write {arg}={value} (an override takes '=', not a space)"
    return ""


def _train(args, overrides) -> int:
    from flax_lm.config import load as config
    from flax_lm.parallel import distributed
    from flax_lm.training import train, watchdog
    cfg = config.load(args.config, overrides)  # starts no JAX backend: initialize comes next
    joined = distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                    heartbeat_seconds=watchdog.heartbeat_for(cfg.train.watchdog_seconds))
    if joined:
        print(f"joined the run as {joined}", flush=True)
    train.train(cfg, args.workdir)
    distributed.leave_together()
    return 0


def _evaluate(args, _) -> int:
    import json

    from flax_lm.training.evaluate import format_metrics, make_evaluator
    from flax_lm.workdir.run import load_run
    from flax_lm.tasks import get_task

    split = "validation" if args.split == "dev" else args.split
    run, state = load_run(args.workdir, args.step, splits=(split,))
    if split not in run.splits:
        raise UserError(f"--split {args.split}: this run has no such split (set data.{split} in its config)")
    metrics = make_evaluator(run, get_task(run.cfg, run.label_names))(state.params, run.splits[split])
    result = {"step": int(state.step), "split": split, **metrics}
    path = Path(args.workdir) / f"eval_{split}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"step {result['step']}, {split}: {format_metrics(metrics)}")
    print(f"all metrics (JSON) in {path}")
    return 0


def _predict(args, _) -> int:
    from flax_lm.training.predict import predict
    n = predict(args.workdir, args.input, args.output, args.step)
    print(f"labelled {n} examples into {args.output}")
    return 0


_GENERATION_FLAGS = (
    ("--max-new-tokens", int, "tokens to add (fewer if the context fills)"),
    ("--temperature", float, "0 is greedy"),
    ("--top-k", int, "sample from the k most likely tokens; 0 keeps all"),
    ("--top-p", float, "nucleus sampling: the smallest set of tokens with this much probability; 1 keeps all"),
    ("--min-p", float, "drop tokens less likely than this times the most likely one"),
    ("--repetition-penalty", float, "> 1 makes tokens already in the text less likely"),
    ("--num-beams", int, "> 1 is beam search (deterministic)"),
    ("--num-return-sequences", int, "continuations per prompt"),
    ("--length-penalty", float, "beam search: > 0 favours longer hypotheses, < 0 shorter ones"),
    ("--early-stopping", str, "beam search: true (stop once num_beams hypotheses ended), false or never"),
    ("--stop-token-ids", str, "comma-separated token ids that also end a continuation"),
)


def _generate(args, _) -> int:
    from flax_lm.workdir.run import generate_texts, load_run
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise UserError(f"--input {args.input!r} does not exist")
        prompts = path.read_text(encoding="utf-8").splitlines()
        if not prompts or not all(p.strip() for p in prompts):
            raise UserError(f"--input {args.input}: give one non-empty prompt a line (line "
                            f"{next((i + 1 for i, p in enumerate(prompts) if not p.strip()), 1)} is empty)")
    else:
        prompts = [args.prompt]
        if not args.prompt.strip():
            raise UserError("--prompt is empty; give text to continue")
    overrides = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
                 for flag, _, _ in _GENERATION_FLAGS}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    from flax_lm.workdir.run import refuse_unless_generative
    from flax_lm.workdir.layout import load_config
    refuse_unless_generative(load_config(args.workdir))
    run, state = load_run(args.workdir, args.step)
    settings = {**run.cfg.sample.to_dict(), **overrides}
    stream = args.prompt is not None and settings["num_beams"] == 1 and settings["num_return_sequences"] == 1
    if stream:
        from flax_lm.workdir.run import special_ids
        echo = "" if run.cfg.model.family == "t5" else args.prompt   # an encoder-decoder prints its output alone
        printer = _StreamPrinter(run.tokenizer, echo, special_ids(run.cfg, run.tokenizer)[0])
        generate_texts(run, state.params, prompts, streamer=printer, **overrides)
        printer.finish()
        return 0
    for text in generate_texts(run, state.params, prompts, **overrides):
        print(text)
    return 0


class _StreamPrinter:
    """Prints a continuation as its tokens arrive: the whole text is decoded each time and only
    the new end printed, so characters that span several tokens come out whole."""

    def __init__(self, tokenizer, prompt: str, eos: int):
        self.tokenizer, self.ids, self.eos = tokenizer, tokenizer.encode(prompt).ids if prompt else [], eos
        self.done, self.printed = False, tokenizer.decode(self.ids)
        print(self.printed, end="", flush=True)

    def __call__(self, tokens_B) -> None:
        token = int(tokens_B[0])
        if self.done:
            return
        self.ids.append(token)
        self.done = token == self.eos
        text = self.tokenizer.decode(self.ids)
        if not text.endswith("\ufffd"):  # an incomplete multi-byte character waits for its next token
            print(text[len(self.printed):], end="", flush=True)
            self.printed = text

    def finish(self) -> None:
        print(flush=True)


def _export(args, _) -> int:
    from flax_lm.interop.export import export
    out = export(args.workdir, args.out, args.step, args.dtype, args.merge)
    print(f"exported to {out}")
    return 0


def _compile(args, overrides) -> int:
    import json

    from flax_lm.config import load as config
    from flax_lm.training import tpu_compile
    cfg = config.load(args.config, overrides)
    if args.num_slices < 1:
        raise UserError(f"--num-slices must be at least 1; got {args.num_slices}")
    report = tpu_compile.compile_train_step(cfg, tpu_compile.topology_devices(args.topology, args.num_slices),
                                            model_step=not args.no_model_step)
    topology = args.topology + (f" x {args.num_slices} slices" if args.num_slices > 1 else "")
    print(tpu_compile.format_report(args.config, topology, report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return COMPILE_DOES_NOT_FIT if report["fits"] is False else 0


def _prepare(args, overrides) -> int:
    from flax_lm.config import load as config
    from flax_lm.workdir.prepare import prepare
    cfg = config.load(args.config, overrides)
    counts = prepare(cfg, Path(args.out), args.part, args.parts)
    print(f"part {args.part} of {args.parts}: {counts['documents']:,} documents, {counts['tokens']:,} tokens in "
          f"{counts['seconds']:.1f} s ({counts['tokens_per_s']:,.0f} tokens/s); train with "
          f"--config.data.source=tokens:{args.out}")
    return 0


def _config(args, overrides) -> int:
    from flax_lm.config import load as config, keys as config_keys
    cfg = config.load(args.config, overrides)
    lines = config_keys.key_table(cfg, args.keys) if args.keys is not None else config_keys.resolved(cfg)
    print("\n".join(lines))
    return 0


def _import(args, _) -> int:
    from flax_lm.interop.hf_import import import_hf
    workdir = import_hf(args.hf, args.workdir, args.task, args.peft)
    print(f"imported {args.hf}{f' with the adapter {args.peft}' if args.peft else ''} into {workdir}")
    return 0


def _embed(args, _) -> int:
    from flax_lm.training.embed import embed
    count, dimension = embed(args.workdir, args.input, args.output, args.pooling, args.normalize, args.step)
    print(f"embedded {count} texts ({dimension} dimensions) into {args.output}")
    return 0


COMMANDS = {"train": _train, "evaluate": _evaluate, "predict": _predict, "generate": _generate, "export": _export,
            "import": _import, "compile": _compile, "prepare": _prepare, "config": _config, "embed": _embed}


def entry_point() -> None:
    startup.choose_platforms()  # before JAX starts a backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
