"""The demo's tiny student: built from the task's corpus and served by one vLLM server with runtime LoRA."""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.demo.processes import ManagedProcess, start_vllm
from gateway.demo.task import tokenizer_corpus
from redistill.tinymodel import build_student, build_tokenizer

SERVED_NAME = "demo-student"


@dataclass(frozen=True, slots=True)
class StudentServer:
    """A running vLLM server for the tiny student."""

    base_url: str  # OpenAI API root, ".../v1"
    served_name: str
    model_dir: Path  # weights + tokenizer (the tokenizer path is the same dir)
    process: ManagedProcess
    max_lora_rank: int

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    @property
    def tokenizer_dir(self) -> Path:
        return self.model_dir


def build_demo_student(out_dir: str | Path, *, seed: int = 0, vocab_size: int = 1536,
                       include_after_vocab: bool = False, **model_kwargs: int) -> Path:
    """Tokenizer trained on the demo task's corpus + a randomly initialised tiny Llama, saved to out_dir."""
    tokenizer = build_tokenizer(tokenizer_corpus(seed=seed + 1234, include_after=include_after_vocab), vocab_size)
    return build_student(out_dir, tokenizer, seed=seed, **model_kwargs)


@contextmanager
def serve_student(model_dir: str | Path, workdir: str | Path, *, served_name: str = SERVED_NAME,
                  max_lora_rank: int = 16, max_model_len: int = 512, dtype: str = "auto",
                  extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                  timeout: float = 300.0) -> Iterator[StudentServer]:
    """vLLM serving ``model_dir`` with runtime LoRA loading on; stopped on exit."""
    proc = start_vllm(model_dir, served_name, enable_lora=True, max_lora_rank=max_lora_rank,
                      max_model_len=max_model_len, dtype=dtype, extra_args=extra_args, env=env,
                      workdir=workdir, timeout=timeout)
    try:
        yield StudentServer(f"{proc.url}/v1", served_name, Path(model_dir), proc, max_lora_rank)
    finally:
        proc.stop()


@contextmanager
def start_student_server(workdir: str | Path, **serve_kwargs: object) -> Iterator[StudentServer]:
    """Build the demo student into ``workdir/model`` and serve it (the tests' session fixture)."""
    work = Path(workdir)
    model_dir = build_demo_student(work / "model")
    with serve_student(model_dir, work, **serve_kwargs) as server:  # type: ignore[arg-type]
        yield server
