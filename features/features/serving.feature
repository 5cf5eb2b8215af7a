Feature: A local cluster answers chat completions
  A newcomer runs `rbee up` and gets an OpenAI-compatible endpoint served by a real model,
  through queen, NATS JetStream and a worker, with every step recorded as an event.

  @E2E-1
  Scenario: Cold start with no worker and the model not yet on the node
    Given a fresh data directory
    When I run rbee up
    Then the log shows the model provisioned onto the node and registered in the catalog
    And the log shows a worker registered and then ready
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"

  @E2E-2
  Scenario: Warm start reuses the idle worker
    Given a running cluster
    When I run rbee up on it again
    Then rbee up says it reuses the running cluster and the ready worker
    And no further worker was requested or registered
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"
    And that request was served by the worker that was already ready

  @INF-1
  Scenario: A streaming request gets OpenAI chunks and ends with [DONE]
    Given a running cluster
    When I stream a chat completion of "Say hello to the bees." with max_tokens 20
    Then every event before the last is a chat.completion.chunk with the request's id
    And the chunks carry the assistant role first and then text deltas
    And the final chunk has a finish_reason and usage that adds up
    And the stream ends with "data: [DONE]"
    And the queen's /metrics counts it as ok with its time to first token, in valid text format

  @INF-3
  Scenario: The model stops at its end-of-sequence token
    Given a running cluster
    When I ask "What is the capital of France? Answer in one sentence." with max_tokens 200
    Then the finish_reason is "stop"
    And completion_tokens is below 200 and equals the count in the request.finished event

  @INF-4
  Scenario: Generation stops at max_tokens
    Given a running cluster
    When I ask "Write a long story about a bee." with max_tokens 4
    Then the finish_reason is "length"
    And completion_tokens is 4 and equals the count in the request.finished event

  @INF-6
  Scenario: max_tokens beyond the context window is refused before any work
    Given a running cluster
    When I ask "Hello" with max_tokens 100000
    Then the response is HTTP 400 with code "CONTEXT_LENGTH_EXCEEDED" naming the limit 4096
    And no slot was claimed for that request

  @INF-5
  Scenario: A generation past the worker's time limit stops with GENERATION_TIMEOUT and returns what it made
    Given a cluster of my own whose workers stop a generation after 2 seconds
    When I stream "Tell me a very long story about a bee." with max_tokens 3000 to its end
    Then the stream carried text, then an error event "GENERATION_TIMEOUT", then [DONE]
    And the log records the request finished with code "GENERATION_TIMEOUT" and the tokens it made
    When I ask "Tell me a very long story about a bee." with max_tokens 3000
    Then the answer is HTTP 504 with code "GENERATION_TIMEOUT" and the text made so far as error.partial_content
    And the log records the request finished with code "GENERATION_TIMEOUT" and the tokens it made
