"""Health: the monitoring job (``job``), its typed report (``report``), the staleness judgement
(``staleness``), the alerts it decides to send (``alerting``), the live summaries the admin, the
API and ``/metrics`` read (``summaries``) and whether a worker is alive to run queued work
(``workers``). Import from the submodules."""
