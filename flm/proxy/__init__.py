"""The request path of a running API: early refusal, admission, upstream relay."""
