"""The `jaxmerge` command: one sub-command per module, listed explicitly below.

Each sub-command module has `add_arguments(parser)` and `run(args) -> int`.
Exit status: 0 done; 2 bad input or bad configuration (one line on stderr that
names the file, the parameter and what is wrong); 1 an internal error.
"""

import argparse
import importlib
import os
import pathlib
import platform
import sys
import traceback

from jaxmerge import distributed
from jaxmerge.cli import quiet
from jaxmerge.errors import InputError

# name -> (module, one-line help). A command module keeps its heavy imports (seqio,
# TensorFlow, models) inside run(), so building the parser stays cheap.
COMMANDS = {
    "demo": ("jaxmerge.cli.demo", "the study on its embedded default (--merge_only: quick)"),
    "merge": ("jaxmerge.cli.merge", "merge a base and experts into one checkpoint"),
    "inspect": ("jaxmerge.cli.inspect", "show a checkpoint's format, step, parameters and size"),
    "train": ("jaxmerge.cli.train", "pre-train or fine-tune a T5 1.1 model (T5X gin)"),
    "eval": ("jaxmerge.cli.eval", "score checkpoints on seqio tasks, normalized as the paper"),
    "learn": ("jaxmerge.cli.learn", "learn merge coefficients (optax or CMA-ES) and merge"),
    "study": ("jaxmerge.cli.study", "the paper's grid: models, merges, scores, report"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (as every bad input is), and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="jaxmerge", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--verbosity",
        choices=("info", "debug"),
        default=os.environ.get("JAXMERGE_VERBOSITY", "info"),  # read early by _verbosity
        help="debug: also the libraries' start-up logs (TensorFlow, XLA, absl, gin)",
    )
    multi = parser.add_argument_group(
        "several processes (jax.distributed; default: the JAXMERGE_* environment, see "
        "jaxmerge/distributed.py and launch/README.md)"
    )
    multi.add_argument("--coordinator_address", help="HOST:PORT of process 0's coordinator")
    multi.add_argument("--num_processes", type=int, help="processes in the run")
    multi.add_argument("--process_id", type=int, help="this process's index, 0 ... N-1")
    multi.add_argument(
        "--distributed",
        choices=("auto", "off"),
        help="auto: JAX's cluster detection (TPU pods, SLURM, GKE); off: one process",
    )
    multi.add_argument(
        "--heartbeat_timeout",
        type=int,
        default=None,
        help="seconds before a silent peer process counts as dead (default 60)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


# glibc's malloc backs large blocks with fresh mmap'd 4 KiB pages, which the kernel zero-fills
# one fault at a time (about 1.5 GB/s on a VM) and unmaps again on free. XLA:CPU allocates
# every output and temporary that way, so a merge spent more time in the kernel than in
# arithmetic. These tunables (glibc >= 2.35) ask for transparent huge pages, and keep blocks
# up to 32 MiB (the most glibc allows) in the heap, reused rather than unmapped: system time
# of a 1.1B-parameter task arithmetic merge fell from 10-12 s to 3-5 s, of a TIES merge from
# 11-12 s to 7-8 s (benchmarks/merge.py).
MALLOC_TUNABLE = (
    "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432"
    ":glibc.malloc.trim_threshold=17179869184"
)


def relaunch_with_huge_pages() -> None:
    """Re-executes this command once with MALLOC_TUNABLE set, where it can help.

    Only for the real command line (not `main([...])` from Python), only on glibc with
    transparent huge pages not disabled, and never twice; JAXMERGE_MALLOC=default opts out.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables or os.environ.get("JAXMERGE_MALLOC") == "default":
        return
    if platform.libc_ver()[0] != "glibc":
        return
    try:
        thp = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return
    if "[never]" in thp:
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, [tunables, MALLOC_TUNABLE])))
    os.execve(sys.executable, [sys.executable, "-m", "jaxmerge", *sys.argv[1:]], env)


def use_compilation_cache() -> None:
    """Keeps XLA's compiled kernels between runs: JAX's persistent compilation cache.

    A merge compiles a few kernels per parameter shape (histogram passes, the merge
    itself): 1.3 s of a 1.1B-parameter task arithmetic merge and 5.4 s of a TIES one
    went to tracing and compiling them. A second merge of the same shapes (another
    method setting, other experts, the study's grid) loads them instead. The cache lives
    in $XDG_CACHE_HOME/jaxmerge/xla (~/.cache/...), unless JAX_COMPILATION_CACHE_DIR
    names another; JAXMERGE_COMPILATION_CACHE=off turns it off. Cached kernels are the
    same programs, so outputs do not change.
    """
    if os.environ.get("JAXMERGE_COMPILATION_CACHE") == "off":
        return
    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR")  # JAX reads it itself
    if not directory:
        cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        directory = os.path.join(cache_home, "jaxmerge", "xla")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError:
            return  # an unwritable home: compile every time, as without a cache
        if not os.access(directory, os.W_OK):
            return
    import jax

    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _verbosity(argv: list[str]) -> str:
    """--verbosity's value before argparse runs (it must act before any library import)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--verbosity="):
            return arg.split("=", 1)[1]
        if arg == "--verbosity" and i + 1 < len(argv):
            return argv[i + 1]
    return os.environ.get("JAXMERGE_VERBOSITY", "info")


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    if from_command_line:  # first: nothing imported yet is imported twice (JAX: 1-2 s)
        relaunch_with_huge_pages()
    argv = sys.argv[1:] if argv is None else argv
    quiet.quiet_libraries(_verbosity(argv))  # before JAX and TensorFlow are imported
    from jaxmerge.cli.gin_flags import expand_gin_flags

    argv = expand_gin_flags(argv)  # T5X's --gin.KEY=VALUE
    if from_command_line:
        use_compilation_cache()
    args = build_parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        join_processes(args)
        return int(module.run(args) or 0)
    except InputError as e:
        print(f"jaxmerge {args.command}: error: {e}", file=sys.stderr)
        return leave(2)
    except KeyboardInterrupt:
        print(f"jaxmerge {args.command}: interrupted", file=sys.stderr)
        return leave(130)
    except Exception as e:
        if distributed.is_peer_failure(e):  # not a bug here: another process died
            where, reason = distributed.describe(), distributed.peer_failure_reason(e)
            print(
                f"jaxmerge {args.command}: error: {where}: another process of the run stopped "
                f"({reason}); see the other processes' logs",
                file=sys.stderr,
            )
            return leave(1)
        if distributed.joined():
            traceback.print_exc()
            return leave(1)
        raise


def leave(status: int) -> int:
    """`status`, or, in a run of several processes, exit with it at once.

    A normal exit would wait in JAX's shutdown barrier for the other processes, which may
    be waiting in a collective for this one: they learn that it is gone from the
    coordination service instead (its heartbeat stops), and stop too.
    """
    if not distributed.joined():
        return status
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def join_processes(args: argparse.Namespace) -> None:
    """jax.distributed.initialize when the flags or the environment name several processes."""
    settings = distributed.resolve(
        args.coordinator_address, args.num_processes, args.process_id, args.distributed
    )
    if not settings.multi_process:
        return
    timeout = args.heartbeat_timeout or distributed.DEFAULT_HEARTBEAT_TIMEOUT_S
    distributed.initialize(settings, heartbeat_timeout_s=timeout)
    print(f"jaxmerge {args.command}: {distributed.describe()}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
