"""The lab: real worker processes on a real Redis, measured, and the twin held against them.

The only part of `simulator` that starts real workers, and not imported by
``import simulator``:

* `simulator.lab.measure`: the library's CPU per effect (`measure_overhead`, the
  constants of `simulator.cpu`) and the round trip (`measure_rtt`);
* `simulator.lab.realrun`: runs requests through worker processes of their own
  (``python -m simulator.lab.realrun``) and returns their merged trace;
* `simulator.lab.handlers`: handlers whose ``perform`` costs a known time, which a
  worker process rebuilds from a JSON spec;
* `simulator.lab.accuracy`: the twin against real runs, calibrated on the same run
  or predicting another (``python -m simulator.lab.accuracy``).
"""
