"""The ``specdecode`` command line: generate | bench | tune | methods, plus commands that plugins add.

Bad input (unknown model or method, unreadable prompt file, malformed JSON, invalid values, empty or too long
prompt) prints one message on stderr and exits with 2; a model that cannot be fetched exits with 1. Plugins add
sub-commands through the ``specdecode_register_commands(subparsers)`` hook.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, SpecDecodeError, invalid

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 1
EXIT_INTERRUPTED = 130

# argparse dest -> SpeculativeConfig field, for the flags that map one to one.
CONFIG_FLAGS = {
    "prompt_lookup_min": "prompt_lookup_min",
    "prompt_lookup_max": "prompt_lookup_max",
    "draft_model": "draft_model",
    "acceptance_method": "acceptance_method",
    "posterior_threshold": "posterior_threshold",
    "posterior_alpha": "posterior_alpha",
}


# -- parser -----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="specdecode",
        description="Lossless speculative decoding for Hugging Face transformers causal LMs.",
    )
    parser.add_argument("--version", action="version", version=f"specdecode {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = subparsers.add_parser("generate", help="generate text for one prompt, streaming it, then print stats")
    gen.add_argument("prompt", nargs="?", help="the prompt text; '-' reads it from stdin")
    gen.add_argument("--prompt", dest="prompt_flag", metavar="TEXT", help="the prompt text (same as the argument)")
    gen.add_argument("--prompt-file", help="read the prompt from this file ('-' for stdin)")
    _add_model_flags(gen)
    _add_config_flags(gen, several=False)
    _add_sampling_flags(gen)
    gen.set_defaults(func=cmd_generate)

    bench = subparsers.add_parser("bench", help="plain generate vs speculative methods on a prompt set")
    _add_model_flags(bench)
    _add_config_flags(bench, several=True)
    _add_prompt_set_flags(bench, default_limit=None)
    bench.add_argument("--max-new-tokens", type=int, default=128, help="tokens per prompt (default 128)")
    bench.add_argument(
        "--hf-prompt-lookup",
        action="store_true",
        help="also run transformers' own prompt lookup (generate(prompt_lookup_num_tokens=K)) for each K",
    )
    bench.add_argument(
        "--hf-max-matching-ngram-size", type=int, help="max_matching_ngram_size for --hf-prompt-lookup (default 2)"
    )
    _add_output_flags(bench)
    bench.set_defaults(func=cmd_bench)

    tune = subparsers.add_parser("tune", help="sweep K (and the n-gram window), predict and measure, recommend")
    _add_model_flags(tune)
    _add_config_flags(tune, several=False)
    tune.add_argument("--k-values", type=int, nargs="+", help="K values to sweep (default 1 2 3 4 5 6 8)")
    tune.add_argument(
        "--windows", nargs="+", metavar="MIN:MAX", help="n-gram windows to try at the best K (default 1:3 2:4 3:5)"
    )
    _add_prompt_set_flags(tune, default_limit=3)
    tune.add_argument("--max-new-tokens", type=int, default=64, help="tokens per prompt (default 64)")
    tune.add_argument("--repeats", type=int, default=5, help="timed forwards per verify-cost point (default 5)")
    _add_output_flags(tune)
    tune.set_defaults(func=cmd_tune)

    methods = subparsers.add_parser("methods", help="list installed speculation methods")
    methods.add_argument("-v", "--verbose", action="store_true", help="also plugin, hooks, location and failures")
    methods.set_defaults(func=cmd_methods)

    _register_plugin_commands(subparsers)
    return parser


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_MODEL, EMBEDDED

    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"embedded model ({', '.join(EMBEDDED)}), a local model directory or a .gguf file "
        f"(default {DEFAULT_MODEL})",
    )
    parser.add_argument("--cache-dir", help="where converted models live (default $SPECDECODE_CACHE or ~/.cache/specdecode)")
    parser.add_argument("--no-chat-template", action="store_true", help="feed the prompt as is, without the chat template")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is often faster on a busy machine)"
    )


def _add_config_flags(parser: argparse.ArgumentParser, several: bool) -> None:
    group = parser.add_argument_group("speculation (SpeculativeConfig fields)")
    if several:
        group.add_argument("--method", action="append", help="speculation method; repeat to compare several (default ngram)")
        group.add_argument(
            "-k", "--num-speculative-tokens", type=int, nargs="+", help="draft tokens per step; several to compare"
        )
    else:
        group.add_argument("--method", help="speculation method (see `specdecode methods`; default ngram)")
        group.add_argument("-k", "--num-speculative-tokens", type=int, help="draft tokens per step (default 5)")
    group.add_argument("--prompt-lookup-min", type=int, help="ngram: shortest suffix to match")
    group.add_argument("--prompt-lookup-max", type=int, help="ngram: longest suffix to match")
    group.add_argument("--draft-model", help="draft_model: an embedded name, a model directory or a .gguf file")
    group.add_argument("--acceptance-method", help="rejection_sampler (lossless, default) or typical_acceptance_sampler")
    group.add_argument("--posterior-threshold", type=float, help="typical acceptance: threshold (default 0.09)")
    group.add_argument("--posterior-alpha", type=float, help="typical acceptance: alpha (default 0.3)")
    group.add_argument(
        "--speculative-config", metavar="JSON", help="the whole config as JSON in vLLM's shape; flags override its keys"
    )
    group.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method's own option (VALUE parsed as JSON when it can be); repeatable",
    )


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, default=128, help="default 128")
    group.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy; > 0 samples")
    group.add_argument("--top-k", type=int, help="keep the k most likely tokens when sampling")
    group.add_argument("--top-p", type=float, help="nucleus sampling threshold in (0, 1]")
    group.add_argument("--seed", type=int, help="seed for sampling")
    group.add_argument(
        "--generation-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting of transformers' generate / GenerationConfig, e.g. repetition_penalty=1.2 (VALUE parsed as "
        "JSON when it can be); repeatable",
    )
    group.add_argument("--logprobs", type=int, metavar="N", help="after the text, each token's log-probability and "
                       "the N most likely tokens at its position")
    structured = parser.add_argument_group("structured output (needs xgrammar: pip install 'specdecode[grammar]')")
    structured.add_argument("--json-schema", metavar="FILE", help="the output must be JSON that follows this schema")
    structured.add_argument("--regex", metavar="PATTERN", help="the output must match this regular expression")
    structured.add_argument("--grammar", metavar="FILE", help="the output must follow this EBNF grammar (GBNF style)")


def _add_prompt_set_flags(parser: argparse.ArgumentParser, default_limit: int | None) -> None:
    parser.add_argument(
        "--prompts", help="jsonl prompt file: Spec-Bench rows ('turns') or rows with 'prompt' (default: built-in set)"
    )
    parser.add_argument("--category", action="append", help="keep rows of this category; repeat or comma-separate")
    parser.add_argument(
        "--limit", type=int, default=default_limit, help=f"at most this many prompts (default {default_limit or 'all'})"
    )


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="FILE", help="write machine-readable results to FILE ('-' for stdout)")
    parser.add_argument("--plot", metavar="FILE.png", help="save a figure (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _register_plugin_commands(subparsers: Any) -> None:
    """Let each plugin add its commands; a plugin that raises is reported and skipped, the others still load."""
    from .registry import get_registry

    registry = get_registry()
    for impl in registry.pm.hook.specdecode_register_commands.get_hookimpls():
        name = registry.pm.get_name(impl.plugin)
        try:
            registry.call_one(name, "specdecode_register_commands", subparsers=subparsers)
        except Exception as exc:  # one broken plugin must not take the command line down
            warnings.warn(f"plugin {name!r} failed to add its commands: {type(exc).__name__}: {exc}", stacklevel=2)


# -- main -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from .models import ModelUnavailableError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except ModelUnavailableError as exc:
        _error(str(exc))
        return EXIT_UNAVAILABLE
    except SpecDecodeError as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `specdecode generate ... | head`
        sys.stderr.close()
        return 0


def _error(message: str) -> None:
    print(f"specdecode: error: {message}", file=sys.stderr, flush=True)


# -- building configs from flags --------------------------------------------------------------------------


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (got {text!r})",
            field=what,
            value=text,
        ) from None
    if not isinstance(value, dict):
        raise invalid(what, value, "a JSON object like '{\"method\": \"ngram\", \"num_speculative_tokens\": 5}'")
    return value


def parse_method_options(items: list[str], flag: str = "--method-option") -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise invalid(flag, item, "KEY=VALUE")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw  # a bare word is a string
    return options


def config_dict_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The speculative config as a dict: --speculative-config first, then explicit flags on top."""
    data = parse_json_object(args.speculative_config, "speculative_config") if args.speculative_config else {}
    for dest, field in CONFIG_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            if field == "draft_model":
                data.pop("model", None)  # vLLM's alias of draft_model would clash with the flag
            data[field] = value
    options = parse_method_options(args.method_option)
    if options:
        data["method_options"] = {**(data.get("method_options") or {}), **options}
    return data


def build_config(args: argparse.Namespace, method: str | None = None, k: int | None = None) -> Any:
    from .config import SpeculativeConfig

    data = config_dict_from_args(args)
    if method is not None:
        data["method"] = method
    if k is not None:
        data["num_speculative_tokens"] = k
    return SpeculativeConfig.from_dict(data)


def load_model_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from .models import load_model

    _check_positive("threads", args.threads)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return load_model(args.model, cache=args.cache_dir)


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or value < 1):
        raise invalid(name, value, "an integer >= 1")


# -- generate ---------------------------------------------------------------------------------------------


def read_prompt(args: argparse.Namespace) -> str:
    flag = getattr(args, "prompt_flag", None)
    if flag is not None:
        if args.prompt is not None:
            raise ConfigError("give the prompt either as an argument or with --prompt, not both", field="prompt")
        args.prompt = flag
    if args.prompt is not None and args.prompt_file is not None:
        raise ConfigError("give the prompt either as an argument or with --prompt-file, not both", field="prompt")
    if args.prompt_file is not None:
        text = _read_text(args.prompt_file)
    elif args.prompt == "-":
        text = sys.stdin.read()
    elif args.prompt is not None:
        text = args.prompt
    else:
        raise ConfigError(
            "no prompt: give it as an argument, with --prompt-file FILE, or '-' to read stdin", field="prompt"
        )
    if not text.strip():
        raise ConfigError(f"'prompt' must be non-empty text (got {text!r})", field="prompt", value=text)
    return text


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"prompt file {path!r} does not exist", field="prompt_file", value=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read prompt file {path!r}: {exc}", field="prompt_file", value=path) from None


def _sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.temperature < 0:
        raise invalid("temperature", args.temperature, ">= 0 (0 is greedy)")
    if args.top_k is not None and args.top_k < 0:
        raise invalid("top_k", args.top_k, "an integer >= 0 (0 disables it)")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise invalid("top_p", args.top_p, "a number in (0, 1]")
    sampling = args.temperature > 0
    if not sampling and (args.top_k is not None or args.top_p is not None):
        raise ConfigError(
            "--top-k and --top-p apply when sampling: add --temperature > 0 (0 is greedy)", field="temperature"
        )
    return {
        "do_sample": sampling,
        "temperature": args.temperature if sampling else None,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
    }


def _structured_output(args: argparse.Namespace) -> dict[str, Any]:
    """--json-schema FILE / --regex PATTERN / --grammar FILE as generate()'s keyword (at most one)."""
    given = [(flag, value) for flag, value in (("--json-schema", args.json_schema), ("--regex", args.regex),
                                               ("--grammar", args.grammar)) if value is not None]
    if len(given) > 1:
        raise ConfigError(f"give one of --json-schema, --regex and --grammar (got {', '.join(f for f, _ in given)})",
                          field=given[1][0], value=given[1][1])
    if not given:
        return {}
    flag, value = given[0]
    if flag == "--regex":
        return {"regex": value}
    text = _read_file(flag, value)
    if flag == "--grammar":
        return {"grammar": text}
    try:
        return {"json_schema": json.loads(text)}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--json-schema: {value!r} is not valid JSON: {exc.msg} at line {exc.lineno} column "
                          f"{exc.colno}", field="--json-schema", value=value) from None


def _read_file(flag: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{flag}: the file {path!r} does not exist", field=flag, value=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{flag}: cannot read {path!r}: {exc}", field=flag, value=path) from None


def format_logprobs(tokenizer: Any, tokens: list[int], scores: Sequence[Any], top: int) -> str:
    """One line per generated token: its text, its log-probability under the target's processed distribution
    (what it was picked from), and the ``top`` most likely tokens there."""
    lines = []
    for position, (token, row) in enumerate(zip(tokens, scores)):
        logprobs = row.reshape(-1, row.shape[-1])[0].float().log_softmax(dim=-1)  # [V] (the first sequence)
        values, ids = logprobs.topk(min(top, logprobs.shape[-1]))
        alternatives = "  ".join(f"{tokenizer.decode([i])!r} {v:.3f}" for v, i in zip(values.tolist(), ids.tolist()))
        lines.append(f"{position:4d}  {tokenizer.decode([token])!r:>14}  {float(logprobs[token]):8.3f}  | {alternatives}")
    return "\n".join(lines)


def cmd_generate(args: argparse.Namespace) -> int:
    # Everything that can be checked without the model is checked first: bad input fails fast.
    prompt = read_prompt(args)
    config = build_config(args, method=args.method, k=args.num_speculative_tokens)
    _check_positive("max_new_tokens", args.max_new_tokens)
    _check_positive("logprobs", args.logprobs)
    sampling = _sampling_kwargs(args)
    options = parse_method_options(args.generation_option, "--generation-option")
    clash = sorted(k for k in options if sampling.get(k) is not None or k in ("max_new_tokens", "seed"))
    if clash:
        raise ConfigError(f"--generation-option sets {clash[0]!r}, which a flag of its own sets; use the flag",
                          field="--generation-option", value=clash[0])
    sampling = {k: v for k, v in sampling.items() if k not in options}
    structured = _structured_output(args)

    from transformers import TextStreamer

    from .generation import generate
    from .models import encode_prompt, fit_to_context

    model, tokenizer = load_model_from_args(args)
    input_ids = encode_prompt(tokenizer, prompt, chat=not args.no_chat_template)
    max_new = fit_to_context(model, input_ids.shape[1], args.max_new_tokens)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    scores = {"return_dict_in_generate": True, "output_scores": True} if args.logprobs else {}
    out = generate(
        model, input_ids, config, max_new_tokens=max_new, tokenizer=tokenizer, streamer=streamer,
        **sampling, **options, **structured, **scores,
    )
    sys.stdout.flush()
    if args.logprobs:
        print(f"\nlog-probabilities (top {args.logprobs} at each position):")
        print(format_logprobs(tokenizer, out.sequences[0, input_ids.shape[1] :].tolist(), out.scores, args.logprobs))
    print(f"[{config.method} K={config.num_speculative_tokens}] {out.stats.summary()}", file=sys.stderr)
    return 0


# -- bench ------------------------------------------------------------------------------------------------


def _categories(args: argparse.Namespace) -> list[str] | None:
    if not args.category:
        return None
    return [c.strip() for item in args.category for c in item.split(",") if c.strip()]


def bench_variants(args: argparse.Namespace) -> list[Any]:
    from .bench import Variant

    methods = args.method or [config_dict_from_args(args).get("method", "ngram")]
    ks = args.num_speculative_tokens or [None]
    for k in ks:
        _check_positive("num_speculative_tokens", k)
    methods, ks = list(dict.fromkeys(methods)), list(dict.fromkeys(ks))  # a repeated flag is one variant
    configs = [build_config(args, method=m, k=k) for m in methods for k in ks]
    variants = [Variant.speculative(c) for c in configs]
    if args.hf_prompt_lookup:
        ngram = args.hf_max_matching_ngram_size
        _check_positive("hf_max_matching_ngram_size", ngram)
        for k in ks:
            variants.append(Variant.hf_prompt_lookup(k or configs[0].num_speculative_tokens, ngram))
    return variants


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import PLAIN, format_table, load_prompts, plot, run_bench

    _check_positive("max_new_tokens", args.max_new_tokens)
    prompts = load_prompts(args.prompts, _categories(args), args.limit)
    variants = bench_variants(args)
    _check_outputs(args)

    model, tokenizer = load_model_from_args(args)
    result = run_bench(
        model,
        tokenizer,
        prompts,
        variants,
        max_new_tokens=args.max_new_tokens,
        chat=not args.no_chat_template,
        progress=not args.no_progress,
    )
    result.settings.update(model=args.model, prompts_file=args.prompts or "built-in")
    table_stream = sys.stderr if args.json == "-" else sys.stdout
    print(f"model {args.model}, {len(result.runs_of(PLAIN))} prompts, "
          f"max_new_tokens {args.max_new_tokens}, greedy", file=table_stream)
    print(format_table(result), file=table_stream, flush=True)
    _write_outputs(args, result.to_dict(), lambda path: plot(result, path))
    return EXIT_INTERRUPTED if result.interrupted else 0


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail before a long run, not after it, when an output cannot be written."""
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path and path != "-" and not Path(path).expanduser().resolve().parent.is_dir():
            raise ConfigError(f"{flag}: the directory of {path!r} does not exist", field=flag, value=path)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install 'specdecode[plot]'", field="plot") from None


def _write_outputs(args: argparse.Namespace, data: dict[str, Any], make_plot: Any) -> None:
    if args.json == "-":
        json.dump(data, sys.stdout, indent=2)
        print()
    elif args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))
        print(f"results written to {args.json}", file=sys.stderr)
    if args.plot:
        print(f"figure saved to {make_plot(args.plot)}", file=sys.stderr)


# -- tune -------------------------------------------------------------------------------------------------


def parse_windows(items: list[str] | None) -> list[tuple[int, int]] | None:
    if items is None:
        return None
    windows = []
    for item in items:
        lo, sep, hi = item.partition(":")
        if not sep or not lo.strip().isdigit() or not hi.strip().isdigit() or not 1 <= int(lo) <= int(hi):
            raise invalid("--windows", item, "MIN:MAX with 1 <= MIN <= MAX, e.g. 2:4")
        windows.append((int(lo), int(hi)))
    return windows


def cmd_tune(args: argparse.Namespace) -> int:
    from .bench import load_prompts
    from .tune import DEFAULT_K_VALUES, format_report, plot, tune

    base = build_config(args, method=args.method, k=args.num_speculative_tokens)
    k_values = args.k_values or list(DEFAULT_K_VALUES)
    for k in k_values:
        _check_positive("k_values", k)
    windows = parse_windows(args.windows)
    _check_positive("max_new_tokens", args.max_new_tokens)
    _check_positive("repeats", args.repeats)
    prompts = load_prompts(args.prompts, _categories(args), args.limit)
    _check_outputs(args)

    model, tokenizer = load_model_from_args(args)
    result = tune(
        model,
        tokenizer,
        prompts,
        base,
        k_values=k_values,
        windows=windows,
        max_new_tokens=args.max_new_tokens,
        chat=not args.no_chat_template,
        repeats=args.repeats,
        progress=not args.no_progress,
    )
    stream = sys.stderr if args.json == "-" else sys.stdout
    print(f"model {args.model}, method {base.method}, {len(prompts)} prompts, max_new_tokens {args.max_new_tokens}",
          file=stream)
    print(format_report(result), file=stream, flush=True)
    _write_outputs(args, result.to_dict(), lambda path: plot(result, path))
    return EXIT_INTERRUPTED if result.interrupted else 0


# -- methods ----------------------------------------------------------------------------------------------


def cmd_methods(args: argparse.Namespace) -> int:
    from .registry import available_methods, get_plugin_manager, plugin_failures

    methods = available_methods()
    if not methods:
        print("no speculation methods installed (install a plugin such as specdecode-ngram)")
    width = max((len(m.name) for m in methods), default=0)
    pm = get_plugin_manager()
    for m in methods:
        source = f"{m.distribution} {m.version}".strip()
        print(f"{m.name.ljust(width)}  {source}  {m.description}")
        if args.verbose:
            plugin = pm.get_plugin(m.plugin)
            hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or []) if plugin is not None else []
            print(f"{' ' * width}    plugin: {m.plugin}; hooks: {', '.join(hooks) or '-'}")
            print(f"{' ' * width}    options: {_options_summary(m.spec.options_class)}")
            print(f"{' ' * width}    loaded from: {m.location}")
    if args.verbose:
        failures = plugin_failures()
        for f in failures:
            print(f"failed to load: plugin {f.name!r} ({f.distribution}): {f.error}")
        if not failures:
            print("no plugin failed to load")
    return 0


def _options_summary(options_class: type | None) -> str:
    import attrs

    if options_class is None or not attrs.has(options_class):
        return "none"
    fields = [f for f in attrs.fields(options_class) if f.init]
    return ", ".join(f"{f.name}={f.default!r}" for f in fields) or "none"
