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
