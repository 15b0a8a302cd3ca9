"""Group reward models for MaxMin alignment: one DP reward model per group, given or found by EM."""
