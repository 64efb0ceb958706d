"""genprm_train.reward: the GenPRM reward for GRPO. Exact values through a scripted verifier
engine (aggregation, outcome term, unscorable completions), real math-verify in the real
sandbox, and failures against real sockets: a closed port, a server that never answers, and a
TCP proxy in front of a live vLLM server that drops it."""

import asyncio
import http.server
import json
import math
import threading

import pytest

from genprm.aggregate import AGGREGATIONS
from genprm.testing import Scripted, ScriptedEngine
from genprm.testing.local_server import free_port
from genprm.verifier import GenPRMVerifier
from genprm_train import reward as reward_module
from genprm_train.args import GenPRMRewardArgs
from genprm_train.reward import ProcessReward, RewardServerError, genprm_reward
from tests.support.judgements import judgement
from tests.support.proxy import TCPProxy

PROBLEM = "What is 2+3, doubled?"
# p(Yes) the scripted verifier gives each step, by the step's text
P_YES = {"Add: 2+3 = 5.": 0.9, "Double: 5*2 = 11.": 0.25, "So \\boxed{10}.": 0.8}
COMPLETION = "Add: 2+3 = 5.\nStep 2: Double: 5*2 = 11.\nStep 3: So \\boxed{10}."
EXPECTED = {"last": 0.8, "min": 0.25, "mean": (0.9 + 0.25 + 0.8) / 3, "product": 0.9 * 0.25 * 0.8}


def step_of(prompt: str) -> str:
    """The step a direct-mode verifier prompt asks about: its last user message's last line."""
    return prompt.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0].split("\n")[-1]


def scripted_verifier(max_model_len: int | None = None) -> tuple[GenPRMVerifier, ScriptedEngine]:
    def judge(prompt: str, index: int) -> Scripted:
        step = step_of(prompt).split(": ", 1)[1]  # "Step k: text" -> text
        return judgement(P_YES.get(step, 0.6), others=1.0)

    engine = ScriptedEngine(judge, max_model_len=max_model_len)
    return GenPRMVerifier(engine, mode="direct"), engine


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_the_configured_aggregation_of_the_step_rewards(how):
    verifier, engine = scripted_verifier()
    reward = ProcessReward(verifier, aggregation=how)
    assert reward([PROBLEM], [COMPLETION]) == [pytest.approx(EXPECTED[how])]
    # one request per step, each asking about its own step after the problem
    assert [step_of(p) for p in engine.prompts] == [
        "Step 1: Add: 2+3 = 5.", "Step 2: Double: 5*2 = 11.", "Step 3: So \\boxed{10}."
    ]  # fmt: skip
    assert PROBLEM in engine.prompts[0]


def test_the_outcome_term_is_added_when_math_verify_says_equal(sandbox):
    from genprm.policy import AnswerGrader

    verifier, _ = scripted_verifier()
    reward = ProcessReward(
        verifier, aggregation="min", answer_column="answer", outcome_weight=0.5,
        grader=AnswerGrader(sandbox),
    )  # fmt: skip
    completions = [
        COMPLETION,  # \boxed{10}: right
        COMPLETION.replace("\\boxed{10}", "\\boxed{\\frac{20}{2}}"),  # right, another form
        COMPLETION.replace("\\boxed{10}", "\\boxed{11}"),  # wrong
        COMPLETION.replace("\\boxed{10}", "10"),  # no boxed answer
    ]
    rewards = reward([PROBLEM] * 4, completions, answer=["10", "10", "10", 10])
    assert rewards == pytest.approx([0.25 + 0.5, 0.25 + 0.5, 0.25, 0.25])

    without = ProcessReward(verifier, aggregation="min")  # no column: process reward only
    assert without([PROBLEM], [COMPLETION], answer=["10"]) == [pytest.approx(0.25)]


def test_empty_completions_get_the_unscorable_reward_without_a_request():
    verifier, engine = scripted_verifier()
    reward = ProcessReward(verifier, aggregation="mean", unscorable_reward=-0.5)
    logged = {}
    rewards = reward(
        [PROBLEM] * 3, ["", "  \n ", COMPLETION], log_metric=lambda k, v: logged.update({k: v})
    )
    assert rewards == pytest.approx([-0.5, -0.5, EXPECTED["mean"]])
    assert len(engine.prompts) == 3  # only the third completion's steps were asked about
    assert logged["genprm/unscored_share"] == pytest.approx(2 / 3)
    assert logged["genprm/process_reward"] == pytest.approx((-1 + EXPECTED["mean"]) / 3)


def test_steps_that_do_not_fit_the_verifiers_context_are_unscorable(caplog):
    verifier, _ = scripted_verifier(max_model_len=320)  # step 1 fits, later ones do not
    reward = ProcessReward(verifier, aggregation="last", unscorable_reward=-1.0)
    assert reward([PROBLEM], [COMPLETION]) == [-1.0]
    assert "completion 0 gets unscorable_reward" in caplog.text
    assert "context" in caplog.text and "320" in caplog.text  # the verifier's reason


def test_conversational_prompts_and_completions():
    verifier, engine = scripted_verifier()
    reward = ProcessReward(verifier, aggregation="min")
    prompt = [{"role": "system", "content": "Reason."}, {"role": "user", "content": PROBLEM}]
    completion = [{"role": "assistant", "content": COMPLETION}]
    # no problem column: the prompt's last user message is the problem
    assert reward([prompt], [completion]) == [pytest.approx(0.25)]
    assert PROBLEM in engine.prompts[0] and "Reason." not in engine.prompts[0]
    # a problem column wins over the prompt
    engine.prompts.clear()
    assert reward([prompt], [completion], problem=["What is 5*2?"]) == [pytest.approx(0.25)]
    assert "What is 5*2?" in engine.prompts[0] and PROBLEM not in engine.prompts[0]


def test_bad_input_is_named():
    verifier, _ = scripted_verifier()
    with pytest.raises(TypeError, match="completion 1"):
        ProcessReward(verifier)([PROBLEM] * 2, [COMPLETION, {"text": 1}])
    with pytest.raises(KeyError, match="no column 'answer'.*columns: id"):
        ProcessReward(verifier, answer_column="answer", grader=object())(
            [PROBLEM], [COMPLETION], id=["x"]
        )
    with pytest.raises(ValueError, match="completions \\[1\\]: no reference in 'answer'"):
        ProcessReward(verifier, answer_column="answer", grader=object())(
            [PROBLEM] * 2, [COMPLETION] * 2, answer=["10", None]
        )
    with pytest.raises(ValueError, match="aggregation must be one of"):
        ProcessReward(verifier, aggregation="max")


def test_the_sync_call_works_inside_a_running_event_loop():
    verifier, _ = scripted_verifier()
    reward = ProcessReward(verifier, aggregation="min")

    async def caller():
        return reward([PROBLEM], [COMPLETION])

    assert asyncio.run(caller()) == [pytest.approx(0.25)]


def test_the_trl_function_says_how_to_configure_it():
    reward_module.close()
    with pytest.raises(RuntimeError, match="genprm_reward:` block with `base_urls`"):
        genprm_reward([PROBLEM], [COMPLETION])


# -- failures against real sockets ----------------------------------------------------------


def test_a_closed_port_fails_after_bounded_retries_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(RewardServerError) as caught:
        reward_module.configure(
            {"base_urls": [url], "mode": "direct", "retries": 2, "backoff_s": 0.01}
        )
    message = str(caught.value)
    assert url in message and "after 3 attempts" in message
    assert "Start the GenPRM server" in message


class _Stalling(http.server.BaseHTTPRequestHandler):
    """Lists a model at once, then never answers a completion in time."""

    model = "genprm"
    release = threading.Event()

    def do_GET(self):
        body = json.dumps({"data": [{"id": self.model, "root": self.model}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.release.wait(30)

    def log_message(self, *args):
        pass


def test_a_server_too_slow_fails_after_bounded_retries(smollm2_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    reward = None
    try:
        settings = {
            "base_urls": [url], "tokenizer": str(smollm2_path), "mode": "direct",
            "retries": 1, "backoff_s": 0.01, "timeout_s": 0.5,
        }  # fmt: skip
        reward = reward_module.configure(settings)
        with pytest.raises(RewardServerError) as caught:
            reward([PROBLEM], [COMPLETION])
        message = str(caught.value)
        assert url in message and "after 2 attempts" in message
        assert "Timeout" in message and "genprm_reward.timeout_s" in message
    finally:
        _Stalling.release.set()
        reward_module.close()
        server.shutdown()


def test_the_reward_block_sets_the_verifiers_history_and_adaptive_mode(smollm2_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)  # lists a model
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    block = {"base_urls": [url], "tokenizer": str(smollm2_path), "maj": 4, "sandbox_workers": 1}
    try:
        assert GenPRMRewardArgs(**block).history == "independent"  # the paper's Maj@N
        settings = GenPRMRewardArgs(**block, mode="adaptive", ambiguity=0.2, history="shared")
        reward = ProcessReward.from_settings(settings)
        try:
            verifier = reward.verifier
            assert (verifier.mode, verifier.ambiguity, verifier.history) == (
                "adaptive", 0.2, "shared",
            )  # fmt: skip
            assert verifier.sandbox is not None  # its last level executes code
        finally:
            reward.close()
        with pytest.raises(ValueError, match="ambiguity"):
            GenPRMRewardArgs(**block, ambiguity=0.7)
    finally:
        server.shutdown()


@pytest.mark.vllm_server
def test_a_live_verifier_scores_then_a_dropped_one_is_an_error(vllm_servers, vllm_api_key):
    proxy = TCPProxy(vllm_servers[0].port).start()
    try:
        settings = {
            "base_urls": [proxy.base_url], "mode": "direct", "aggregation": "mean",
            "answer_column": "answer", "outcome_weight": 1.0, "retries": 1, "backoff_s": 0.05,
            "timeout_s": 120, "sandbox_workers": 1, "budget": 24,
        }  # fmt: skip
        reward = reward_module.configure(settings)
        completions = [COMPLETION, COMPLETION.replace("\\boxed{10}", "\\boxed{11}")]
        scored = genprm_reward([PROBLEM] * 2, completions, answer=["10", "10"])
        assert all(math.isfinite(r) for r in scored)
        assert 1.0 <= scored[0] <= 2.0 and 0.0 <= scored[1] <= 1.0  # outcome term on the first

        proxy.stop()
        with pytest.raises(RewardServerError) as caught:
            genprm_reward([PROBLEM], [COMPLETION], answer=["10"])
        assert proxy.base_url in str(caught.value) and "after 2 attempts" in str(caught.value)

        proxy.start()  # the server is back: the same reward object scores again
        again = genprm_reward([PROBLEM], [COMPLETION], answer=["10"])
        assert len(again) == 1 and math.isfinite(again[0])
        assert reward is reward_module._configured
    finally:
        reward_module.close()
        proxy.stop()
