"""Teacher training: the agents that train single-game teachers from pixels.

Its own wing (as DQN Zoo gives each agent a folder): it shares the
environment loop (`acting.play`, `acting.EpisodeTracker`), the networks
(`networks.build_teacher_network`), the frame-stack rebuild
(`environments.stack_frames`) and the checkpoint helpers with the distiller,
and nothing in the distillation pipeline imports it. The parts:

    base     the `Agent` protocol (policy, observe, counters, export)
    replay   the replay memory of single frames and n-step returns
    dqn      Double DQN with n-step returns (a `q_values` teacher)
    ppo      PPO acting with the evaluation protocol's epsilon mixture (a
             `logits` teacher with its critic)
    rnd      Random Network Distillation's exploration bonus for PPO (its
             networks, running statistics and pure functions)
    loop     the training loop: a generator of one record per iteration
    runner   resume, init from a teacher, evaluate and export, checkpoint,
             stop on SIGINT/SIGTERM
    rooms    the rooms a teacher visits on Montezuma's Revenge, Venture and
             Pitfall! (a runner companion reading the emulator's RAM)

The entry point is `python -m multidistill.train_teacher` (flags in
`multidistill.cli`).
"""
