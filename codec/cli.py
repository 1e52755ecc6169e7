"""The `codec` command line. Exit codes: 0 ok, 1 data error, 2 usage error, 3 missing backend."""
from __future__ import annotations

import argparse
import json
import logging
import sys

EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_BACKEND = 0, 1, 2, 3


def _codec_arg(text: str):
    """`--codec` takes an id (zstd), id:level (zstd:19) or a JSON config."""
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"--codec JSON is invalid: {exc}") from None
    return text


def _level_arg(text: str):
    """`--level` takes an integer or `max` (the codec's strongest setting)."""
    if text == "max":
        return "max"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"level must be an integer or 'max', not {text!r}") from None


def _add_output_options(p: argparse.ArgumentParser) -> None:
    """Options shared by compress and decompress."""
    p.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--scheduler", metavar="URL", default=None,
                   help="run on a Dask cluster (tcp://HOST:8786) or 'local' (a process pool); inputs may "
                        "be files, folders, globs or fsspec URLs (see README: Many files and clusters)")
    _add_common(p)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-w", "--workers", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="codec", description="Lossless compression of neural-network "
                                     "weights and data.")
    parser.add_argument("--version", action="version", version=f"codec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("compress", help="compress files to .nnc")
    p.add_argument("inputs", nargs="+", metavar="FILE")
    p.add_argument("-o", "--output", help="output path (one input only)")
    p.add_argument("-c", "--codec", type=_codec_arg, default="auto",
                   help="auto (default), a codec id, or a JSON config; see `codec codecs`")
    p.add_argument("-l", "--level", type=_level_arg, default=None,
                   help="an integer for codecs that take one, or 'max' for the smallest output")
    p.add_argument("--lossy", choices=["int8", "int4", "fp8"], default=None,
                   help="LOSSY: quantize float matrices round-to-nearest per group, then entropy-code "
                        "(decompress returns the dequantized tensors; default: lossless)")
    p.add_argument("--group-size", type=int, default=128, help="values per quantization group (--lossy)")
    p.add_argument("--container", choices=["auto", "safetensors", "gguf", "bytes"], default="auto",
                   help="how to read the input (auto: safetensors if it is one, else opaque bytes)")
    p.add_argument("--chunk-size", type=int, default=None, help="decoded bytes per chunk")
    p.add_argument("--sync", action="store_true", help="flush the output to disk before renaming it into place")
    _add_output_options(p)

    p = sub.add_parser("decompress", help="restore the original files from .nnc")
    p.add_argument("inputs", nargs="+", metavar="FILE")
    p.add_argument("-o", "--output", help="output path (one input only)")
    p.add_argument("--sha256", action="store_true",
                   help="check the restored file's sha256 instead of its XXH3 (slower: ~1.8 GB/s)")
    p.add_argument("--sync", action="store_true", help="flush the output to disk before renaming it into place")
    _add_output_options(p)

    p = sub.add_parser("inspect", help="show the format, codecs and sizes of a .nnc file")
    p.add_argument("input", metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-entropy", action="store_true", help="skip decoding for per-stream entropy")
    _add_common(p)

    p = sub.add_parser("verify", help="check every checksum and decode everything")
    p.add_argument("inputs", nargs="+", metavar="FILE")
    p.add_argument("--sha256", action="store_true",
                   help="check the original's sha256 instead of its XXH3 (slower: ~1.8 GB/s)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    _add_common(p)

    p = sub.add_parser("codecs", help="list the registered codecs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("demo", help="compress a small generated model and show the result")
    p.add_argument("--dir", default=None, help="where to write the demo files (default: a temp dir)")
    _add_common(p)
    _add_hub_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if getattr(args, "debug", False) else logging.WARNING,
                        format="codec: %(message)s")
    from .errors import BackendUnavailableError, CodecError

    try:
        return _COMMANDS[args.command](args, parser)
    except BackendUnavailableError as exc:
        return _fail(args, exc, EXIT_BACKEND)
    except (CodecError, OSError) as exc:
        return _fail(args, exc, EXIT_DATA)
    except KeyboardInterrupt:
        print("codec: interrupted", file=sys.stderr)
        return 130


def _fail(args, exc: BaseException, code: int) -> int:
    if getattr(args, "debug", False):
        raise exc
    print(f"codec: error: {exc}", file=sys.stderr)
    return code


def _usage(parser, msg: str) -> int:
    parser.print_usage(sys.stderr)
    print(f"codec: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _progress(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


def cmd_compress(args, parser) -> int:
    from .api import compress_file
    from .errors import UnknownCodecError
    from .policy import resolve

    if args.scheduler:
        return _run_many(args, parser, "compress")
    if args.output and len(args.inputs) > 1:
        return _usage(parser, "-o/--output needs exactly one input")
    if args.group_size < 1:
        return _usage(parser, "--group-size must be a positive integer")
    if args.codec != "auto":
        try:
            resolve(args.codec, "U8", args.level)
        except (UnknownCodecError, ValueError) as exc:
            return _usage(parser, str(exc))
    results = []
    for path in args.inputs:
        r = compress_file(path, args.output, codec=args.codec, level=args.level, workers=args.workers,
                          overwrite=args.force, container=args.container, chunk_size=args.chunk_size,
                          progress=_progress(args), lossy=args.lossy, group_size=args.group_size,
                          sync=args.sync)
        results.append(r)
        if not args.json and not args.quiet:
            print(r.summary("compressed"))
    if args.json:
        print(json.dumps([_result_json(r) for r in results], indent=2))
    return EXIT_OK


def _result_json(r) -> dict:
    return {"input": r.input, "output": r.output, "original_size": r.original_size,
            "compressed_size": r.compressed_size, "ratio": r.ratio, "seconds": r.seconds,
            "mb_per_s": r.mb_per_s}


def _run_many(args, parser, verb: str) -> int:
    """--scheduler: files, folders and globs through compress_many / decompress_many (-o: a folder)."""
    from . import distributed

    if verb == "compress":
        if args.lossy:
            return _usage(parser, "--lossy is not supported with --scheduler")
        rep = distributed.compress_many(args.inputs, args.scheduler, codec=args.codec, level=args.level,
                                        output_dir=args.output, overwrite=args.force, chunk_size=args.chunk_size,
                                        progress=_progress(args), workers=args.workers, container=args.container)
    else:
        rep = distributed.decompress_many(args.inputs, args.scheduler, output_dir=args.output,
                                          overwrite=args.force, progress=_progress(args), workers=args.workers)
    if args.json:
        print(json.dumps(rep.to_json(), indent=2))
    elif not args.quiet:
        print(rep.summary())
    for f in rep.failed:
        print(f"codec: error: {f.input}: {f.error}", file=sys.stderr)
    return EXIT_OK if rep.ok else EXIT_DATA


def cmd_decompress(args, parser) -> int:
    from .api import decompress_file

    if args.scheduler:
        return _run_many(args, parser, "decompress")
    if args.output and len(args.inputs) > 1:
        return _usage(parser, "-o/--output needs exactly one input")
    results = []
    for path in args.inputs:
        r = decompress_file(path, args.output, workers=args.workers, overwrite=args.force,
                            progress=_progress(args), sha256=args.sha256, sync=args.sync)
        results.append(r)
        if not args.json and not args.quiet:
            print(r.summary("decompressed"))
    if args.json:
        print(json.dumps([_result_json(r) for r in results], indent=2))
    return EXIT_OK


def cmd_verify(args, parser) -> int:
    from .api import verify
    from .errors import CodecError

    code, out = EXIT_OK, []
    for path in args.inputs:
        try:
            rep = verify(path, workers=args.workers, progress=_progress(args), sha256=args.sha256)
            out.append({"path": path, "ok": True, "frames": rep.frames, "original_size": rep.original_size,
                        "check": rep.check})
            if not args.json and not args.quiet:
                print(f"{path}: OK ({rep.frames} frames, {rep.original_size} bytes, {rep.check} matches)")
        except (CodecError, OSError) as exc:
            if args.debug:
                raise
            code = EXIT_DATA
            out.append({"path": path, "ok": False, "error": str(exc)})
            if not args.json:
                print(f"{path}: FAILED: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(out, indent=2))
    return code


def cmd_inspect(args, parser) -> int:
    from .api import inspect

    info = inspect(args.input, entropy=not args.no_entropy, workers=args.workers)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"{info['path']}: format {info['format_version']}, written by {info['written_by']}, "
          f"read by {info['read_by']}")
    hashes = f"sha256 {info['original_sha256'][:16]}..."
    if info.get("original_xxh3"):
        hashes += f", XXH3 {info['original_xxh3']}"
    print(f"container {info['container']}, original {info['original_size']} bytes ({hashes}), "
          f"compressed {info['compressed_size']} bytes "
          f"= {100 * info['compressed_size'] / max(info['original_size'], 1):.2f} %")
    if info["metadata"]:
        print(f"metadata: {json.dumps(info['metadata'])[:200]}")
    if info.get("lossy"):
        lz = info["lossy"]
        print(f"LOSSY: {lz.get('scheme')} quantization, group size {lz.get('group_size')}, "
              f"{lz.get('tensors')} tensors; decompress restores the dequantized file "
              f"(sha256 {lz['decoded_sha256'][:16]}...), not the original")
    head = f"{'tensor':<40} {'dtype':<8} {'shape':<18} {'codec':<28} {'before':>12} {'after':>12} {'ratio':>7}"
    print(head)
    print("-" * len(head))
    for row in info["tensors"]:
        shape = "x".join(map(str, row["shape"])) or "scalar"
        print(f"{row['name'][:40]:<40} {row['dtype']:<8} {shape[:18]:<18} {row['codec'][:28]:<28} "
              f"{row['bytes_before']:>12} {row['bytes_after']:>12} {100 * row['ratio']:>6.1f}%"
              + ("  LOSSY" if row["lossy"] else ""))
        for s in row.get("streams", []):
            if s["symbols"]:
                print(f"{'':<4}stream {s['name']:<16} entropy {s['entropy_bits'] / s['symbols']:.3f} "
                      f"bits/symbol, spent {s['spent_bits'] / s['symbols']:.3f}")
    return EXIT_OK


def cmd_codecs(args, parser) -> int:
    from .registry import registered

    rows = [{"id": cid, "class": f"{cls.__module__}.{cls.__qualname__}", "lossless": cls.lossless,
             "description": cls.description} for cid, cls in registered().items()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['id']:<14} {'lossless' if r['lossless'] else 'LOSSY':<9} {r['description']}")
    return EXIT_OK


def cmd_demo(args, parser) -> int:
    from .demo import run_demo

    return run_demo(args.dir, workers=args.workers, progress=_progress(args))


_COMMANDS = {"compress": cmd_compress, "decompress": cmd_decompress, "verify": cmd_verify,
             "inspect": cmd_inspect, "codecs": cmd_codecs, "demo": cmd_demo}


# --------------------------------------------------------------------------------------
# Hub: push / pull (codec/hub.py)
# --------------------------------------------------------------------------------------
def _add_hub_parsers(sub) -> None:
    p = sub.add_parser("push", help="compress a model folder and upload it to the Hugging Face Hub")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("repo_id", metavar="REPO_ID")
    p.add_argument("--revision", default=None, help="branch to commit to (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT or huggingface.co)")
    p.add_argument("--token", default=None, help="access token (default: $HF_TOKEN or the saved login)")
    p.add_argument("-c", "--codec", type=_codec_arg, default="auto", help="as for `codec compress`")
    p.add_argument("-l", "--level", type=int, default=None, help="level for codecs that take one")
    p.add_argument("-m", "--message", default=None, help="commit message")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_common(p)

    p = sub.add_parser("pull", help="download a compressed model from the Hub, verify, optionally restore")
    p.add_argument("repo_id", metavar="REPO_ID")
    p.add_argument("-o", "--output", default=None, help="folder to create (default: the repo name)")
    p.add_argument("--revision", default=None, help="branch, tag or commit")
    p.add_argument("--decompress", action="store_true",
                   help="restore the original .safetensors files (the .nnc files are not kept)")
    p.add_argument("--keep-nnc", action="store_true", help="with --decompress, keep the .nnc files too")
    p.add_argument("--endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT or huggingface.co)")
    p.add_argument("--token", default=None, help="access token (default: $HF_TOKEN or the saved login)")
    p.add_argument("-f", "--force", action="store_true",
                   help="write into an existing non-empty folder (replaces files of the same name)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_common(p)


def cmd_push(args, parser) -> int:
    from dataclasses import asdict

    from .api import human_size
    from .hub import push

    r = push(args.folder, args.repo_id, revision=args.revision, private=args.private,
             endpoint=args.endpoint, token=args.token, codec=args.codec, level=args.level,
             workers=args.workers, commit_message=args.message, progress=_progress(args))
    if args.json:
        print(json.dumps({**asdict(r), "original_bytes": r.original_bytes,
                          "compressed_bytes": r.compressed_bytes, "ratio": r.ratio}, indent=2))
    elif not args.quiet:
        what = f"commit {r.commit_oid[:12]}" if r.changed else f"nothing changed (still {r.commit_oid[:12]})"
        print(f"pushed {args.folder} -> {r.repo_id}{'@' + r.revision if r.revision else ''}: "
              f"{len(r.files)} files, weights {human_size(r.original_bytes)} -> {human_size(r.compressed_bytes)} "
              f"(ratio {100 * r.ratio:.2f} %), {what}")
    return EXIT_OK


def cmd_pull(args, parser) -> int:
    from dataclasses import asdict

    from .hub import pull

    if args.keep_nnc and not args.decompress:
        return _usage(parser, "--keep-nnc only makes sense with --decompress")
    r = pull(args.repo_id, output=args.output, revision=args.revision, decompress=args.decompress,
             endpoint=args.endpoint, token=args.token, workers=args.workers, keep_compressed=args.keep_nnc,
             overwrite=args.force, progress=_progress(args))
    if args.json:
        print(json.dumps(asdict(r), indent=2))
    elif not args.quiet:
        done = (f"restored {len(r.restored)} file(s), each checked against its original" if args.decompress
                else f"verified {len(r.verified)} .nnc file(s)")
        print(f"pulled {r.repo_id}@{r.commit_oid[:12]} -> {r.output}: {len(r.files)} files, {done}")
    return EXIT_OK


_COMMANDS.update(push=cmd_push, pull=cmd_pull)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
