"""Training recipes (the paper's section 3.2): teachers, the teacher-feature cache, pairs and the losses."""
