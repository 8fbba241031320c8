"""protocol.py — moelab-kernel against jupyter_client's blocking client:
kernel_info, execute with output streamed while the cell runs, rich results,
display_data, an error cell, complete, inspect, is_complete, comm_info,
interrupts (SIGINT and the control channel) that keep the kernel's state, a
message with a bad signature (dropped, logged, the kernel carries on),
restart and shutdown.

Usage: protocol.py KERNEL-NAME LOG-FILE   (the kernelspec on JUPYTER_PATH)
"""
import os
import queue
import sys
import time
from datetime import datetime

from jupyter_client.manager import KernelManager
from jupyter_client.session import Session

name, log_path = sys.argv[1], sys.argv[2]
failures = 0


def check(what, ok, detail=""):
    global failures
    print(("PASS: " if ok else "FAIL: ") + what + ("" if ok else "  " + repr(detail)))
    if not ok:
        failures += 1


log = open(log_path, "w")
km = KernelManager(kernel_name=name)
km.start_kernel(stdout=log, stderr=log)
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=60)


def run(code, timeout=30):
    """Execute CODE; its reply and the iopub messages it caused, in order."""
    msg_id = kc.execute(code)
    out = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        out.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=timeout)
    assert reply["parent_header"]["msg_id"] == msg_id
    return reply, out


def of_type(msgs, t):
    return [m for m in msgs if m["msg_type"] == t]


def when(msg):
    d = msg["header"]["date"]
    return d if isinstance(d, datetime) else datetime.fromisoformat(d.replace("Z", "+00:00"))


# kernel_info, comm_info
info = kc.kernel_info(reply=True, timeout=30)["content"]
check("kernel_info: implementation", info["implementation"] == "moelab", info)
check("kernel_info: protocol 5.3", info["protocol_version"] == "5.3", info)
check("kernel_info: scheme", info["language_info"]["name"] == "scheme", info)
comms = kc.comm_info(reply=True, timeout=30)["content"]
check("comm_info: none", comms["status"] == "ok" and comms["comms"] == {}, comms)

# execute: streams, a result, the execution count
reply, out = run('(display "out") (newline) (display "err" (current-error-port)) (+ 1 2)')
streams = of_type(out, "stream")
check("stdout streamed", any(m["content"]["name"] == "stdout" and "out" in m["content"]["text"]
                             for m in streams), streams)
check("stderr streamed", any(m["content"]["name"] == "stderr" and m["content"]["text"] == "err"
                             for m in streams), streams)
results = of_type(out, "execute_result")
check("execute_result 3", len(results) == 1 and results[0]["content"]["data"]["text/plain"] == "3",
      results)
check("execute_input echoes the code", of_type(out, "execute_input")[0]["content"]["code"]
      .startswith("(display"))
check("reply ok", reply["content"]["status"] == "ok", reply["content"])
count = reply["content"]["execution_count"]
reply, out = run("(define x 41)")
check("no result for an unspecified value", of_type(out, "execute_result") == [], out)
check("execution count grows", reply["content"]["execution_count"] == count + 1, reply["content"])

# output appears while the cell runs, not when it ends
reply, out = run('(display "tick") (usleep 600000) (display "tock") 0')
tick = [m for m in of_type(out, "stream") if m["content"]["text"] == "tick"]
check("tick streamed", len(tick) == 1, out)
if tick:
    lag = (when(reply) - when(tick[0])).total_seconds()
    check("streamed live (%.2f s before the reply)" % lag, lag >= 0.5, lag)

# rich results and display procedures
reply, out = run("(tensor '((1 2) (3 4)))")
data = of_type(out, "execute_result")[0]["content"]["data"]
check("a tensor shows as an HTML table", data.get("text/html", "").count("<td") == 4, data)
reply, out = run("(plot-bars '(1 2 3))")
data = of_type(out, "execute_result")[0]["content"]["data"]
check("a figure shows as SVG", data.get("image/svg+xml", "").startswith("<svg")
      and "<svg" in data["image/svg+xml"], data.keys())
reply, out = run('(display-html "<b>bold</b>") (display-figure (plot-lines (list 1 2)))')
shown = of_type(out, "display_data")
check("display-html and display-figure: display_data",
      len(shown) == 2 and shown[0]["content"]["data"]["text/html"] == "<b>bold</b>"
      and "<svg" in shown[1]["content"]["data"]["image/svg+xml"], shown)

# errors
reply, out = run("(tensor-ref (tensor '(1 2)) 5)")
errors = of_type(out, "error")
check("error cell: reply status error", reply["content"]["status"] == "error", reply["content"])
check("error cell: ename moelab-error", errors and errors[0]["content"]["ename"] == "moelab-error",
      errors)
check("error cell: the moelab message", errors and errors[0]["content"]["evalue"]
      .startswith("moelab-error in tensor-ref"), errors)
check("error cell: a traceback", errors and 1 <= len(errors[0]["content"]["traceback"]) <= 7,
      errors)
reply, out = run("(car 1)")
check("a Guile error", reply["content"]["ename"] == "wrong-type-arg", reply["content"])
reply, out = run("(+ x 1)")
check("state kept after errors", of_type(out, "execute_result")[0]["content"]["data"]
      ["text/plain"] == "42", out)

# complete, inspect, is_complete
c = kc.complete("(tensor-sha", 11, reply=True, timeout=30)["content"]
check("complete", "tensor-shape" in c["matches"] and c["cursor_start"] == 1
      and c["cursor_end"] == 11, c)
c = kc.complete("(def", 4, reply=True, timeout=30)["content"]
check("complete: Guile names too", "define" in c["matches"], c)
i = kc.inspect("(tensor-shape t)", 5, reply=True, timeout=30)["content"]
check("inspect: the docstring", i["found"] and "tensor-shape" in i["data"]["text/plain"]
      and len(i["data"]["text/plain"]) > 30, i)
i = kc.inspect("(no-such-name)", 3, reply=True, timeout=30)["content"]
check("inspect: unknown name", i["found"] is False, i)
for code, status in [("(+ 1 2)", "complete"), ("(+ 1", "incomplete"),
                     ('(display "a', "incomplete"), (")", "invalid")]:
    kc.is_complete(code)
    r = kc.get_shell_msg(timeout=30)["content"]
    check("is_complete %s: %s" % (code, status), r["status"] == status, r)

# interrupts: SIGINT (the kernelspec's interrupt_mode) and the control channel
for how in ("signal", "control"):
    msg_id = kc.execute("(let loop ((i 0)) (loop (+ i 1)))")
    time.sleep(1.0)
    if how == "signal":
        km.interrupt_kernel()
    else:
        kc.control_channel.send(kc.session.msg("interrupt_request", {}))
        r = kc.get_control_msg(timeout=30)
        check("interrupt_reply", r["msg_type"] == "interrupt_reply"
              and r["content"]["status"] == "ok", r)
    reply = kc.get_shell_msg(timeout=30)
    check("interrupted (%s)" % how, reply["parent_header"]["msg_id"] == msg_id
          and reply["content"]["status"] == "error"
          and reply["content"]["ename"] == "interrupt", reply["content"])
    reply, out = run("(+ x 1)")
    check("state kept after the interrupt (%s)" % how,
          of_type(out, "execute_result")[0]["content"]["data"]["text/plain"] == "42", out)

# a message signed with another key: dropped and logged, the kernel carries on
bad = Session(key=b"not-the-key", username="intruder")
bad.send(kc.shell_channel.socket, "execute_request",
         {"code": "(define x 0)", "silent": False, "store_history": True,
          "user_expressions": {}, "allow_stdin": False})
try:
    r = kc.get_shell_msg(timeout=1.5)
    check("bad signature: no reply", False, r)
except queue.Empty:
    check("bad signature: no reply", True)
reply, out = run("(+ x 1)")
check("bad signature: not run, the kernel carries on",
      of_type(out, "execute_result")[0]["content"]["data"]["text/plain"] == "42", out)
log.flush()
with open(log_path) as f:
    check("bad signature: logged", "bad signature" in f.read())

# restart: a fresh kernel, state gone
km.restart_kernel(now=False)
kc.wait_for_ready(timeout=60)
reply, out = run("x")
check("restart: state gone", reply["content"]["status"] == "error", reply["content"])
reply, out = run("(* 6 7)")
check("restart: runs", of_type(out, "execute_result")[0]["content"]["data"]["text/plain"] == "42",
      out)

kc.stop_channels()
km.shutdown_kernel(now=False)
check("shutdown", not km.is_alive())
print("%d failure(s)" % failures)
sys.stdout.flush()
os._exit(1 if failures else 0)  # skip the client's noisy teardown
