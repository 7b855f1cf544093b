"""Ray actors and the plain objects inside them: engines, judge, DPO trainer, losses."""
