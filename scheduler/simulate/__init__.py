"""``python -m scheduler.simulate``: the live dispatch and runner policy on a virtual clock.

The bus's :class:`~scheduler.policy.dispatch.dispatcher.Dispatcher` and each scheduler's
:class:`~scheduler.policy.runner.Runner` (the same classes the live system runs) are fed
by a discrete-event loop (:mod:`.engine`) instead of sockets and processes: a simulated
job process ends when its runtime (from the workload) is over; periodic schedules run
the bus's :class:`~scheduler.policy.schedule_driver.ScheduleDriver`. Parts:
:mod:`.workload` (what is submitted when), :mod:`.entries` (a workload's cancels and
schedules), :mod:`.periodic` (the bus's glue for them), :mod:`.fleet` (the schedulers
and what happens to them), :mod:`.node` (one scheduler: the executor's glue around its
runner), :mod:`.engine` (the bus's glue and the clock), :mod:`.metrics` (what is
measured), :mod:`.report` (table and JSON), :mod:`.plot` (matplotlib, optional) and
:mod:`.cli`.
"""
