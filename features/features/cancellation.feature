Feature: Cancelled requests stop the worker and free its slot
  The cancellation is an event; the worker stops within one token, records the partial result
  and releases the slot.

  @Gap-G12b
  Scenario: A client that disconnects mid-stream frees the slot
    Given a running cluster
    When I stream "Write a long story about a bee." with max_tokens 400 and disconnect after 3 chunks
    Then the worker's slot is free again in rbee workers
    And the log shows request.cancelled, then request.finished as cancelled, then slot.released
    And the cancelled request generated fewer than 400 tokens

  @Gap-G12a
  Scenario: Ctrl+C in rbee infer cancels the request and exits 130
    Given a running cluster
    When I run rbee infer "Write a long story about a bee." and press Ctrl+C once text appears
    Then rbee infer exits with code 130
    And the worker's slot is free again in rbee workers
    And the log shows request.cancelled, then request.finished as cancelled, then slot.released

  # The worker has four slots: the four requests are advanced together in one batch by its engine.
  @Gap-G12g
  Scenario: Requests batched on one worker all stop when cancelled, and every slot is freed
    Given a cluster of my own whose worker has 4 slots
    When 4 streaming requests of "Write a long story about a bee." with max_tokens 400 run at once
    Then all 4 stream text at the same time, from the one worker
    When all 4 are cancelled with DELETE /v1/requests/{id}
    Then each of them ends with request.cancelled, then request.finished as cancelled, then slot.released
    And the worker's 4 slots are free again in rbee workers
    And a new request is answered with finish_reason "length"

  @Gap-G12c
  Scenario: DELETE stops a running request with 204, and answers 204 again when repeated
    Given a cluster of my own whose worker has 1 slots
    When 1 streaming requests of "Write a long story about a bee." with max_tokens 400 run at once
    And all 1 are cancelled with DELETE /v1/requests/{id}
    And all 1 are cancelled with DELETE /v1/requests/{id}
    Then each of them ends with request.cancelled, then request.finished as cancelled, then slot.released
    And a new request is answered with finish_reason "length"

  @Gap-G12f
  Scenario: A request whose client goes away while its model's worker loads never runs, and the worker still comes up
    Given a cluster of my own without workers
    When a worker is started and, while it loads, a request for its model is abandoned by its client
    Then the log holds no slot claimed and no request accepted
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"
