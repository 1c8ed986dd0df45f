"""What a drafted reply is worth: the reply rules (form), the substance rules, drafting with checks and
redrafts (what a worker stores), `moodq eval` and the opt-in model grader."""
