"""Health: the monitoring job (``job``), its typed report (``report``), the staleness judgement
(``staleness``), the alerts it decides to send (``alerting``) and the live summaries the admin, the
API and ``/metrics`` read (``summaries``). Import from the submodules."""
