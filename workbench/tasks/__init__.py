"""What a task's answer is and how it is scored, shared by the evals (evals/) and the rewards
(train/rewards.py) so that a completion the eval counts right earns the reward, and the other way
round. `answers` reads a completion (its thought, tool calls and outputs, its final number or
letter); torch-free."""
