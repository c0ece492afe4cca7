"""The perturbation engine: seeded, scheduled, seekable changes to a session's spike counts
(neural perturbations) and to its packets' delivery (transport faults), announced as ground truth.

- spec: the kinds, parameters, presets and request parsing;
- schedule: levels over the packet axis;
- draws: counter-based randomness keyed by (seed, session, stream, index);
- neural, tables, zeromean: what the neural kinds do to counts;
- transport: what the transport faults do to delivery;
- engine: one session's engine.
"""
