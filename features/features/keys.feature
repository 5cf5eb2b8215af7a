Feature: Only holders of an API key use the queen, each within its limits and over its own requests

  Keys are events: made and revoked with rbee keys, folded by every queen. Every /v1 route needs
  `Authorization: Bearer <key>`; /health and /metrics stay open.

  @SEC-1
  Scenario: A request without a key or with a wrong one is refused, OpenAI-shaped
    Given a running cluster
    When I ask "What is the capital of France?" without an API key
    Then the response is HTTP 401 with code "MISSING_API_KEY" and the header WWW-Authenticate "Bearer"
    When I ask "What is the capital of France?" with the API key "rbee-not-a-key"
    Then the response is HTTP 401 with code "INVALID_API_KEY" and the header WWW-Authenticate "Bearer"
    When I list the models without an API key
    Then the response is HTTP 401 with code "MISSING_API_KEY" and the header WWW-Authenticate "Bearer"
    And /health and /metrics answer without a key
    And asking "What is the capital of France? Answer in one sentence." gets an answer naming "Paris"

  @SEC-2
  Scenario: A queen without keys serves only its own machine
    Given a running cluster
    When a queen is started with --no-auth on 0.0.0.0
    Then it exits with code 1 naming "INVALID_CONFIG" and "--no-auth"
    When a queen is started with --no-auth on 127.0.0.1
    Then it answers a chat completion without a key and its log says it runs without API keys

  @SEC-3
  Scenario: A key rotated and revoked is refused at once by every queen, without a restart
    Given a running cluster
    And a second queen serving the same cluster
    And I made an API key "old" with rbee keys create
    And both queens answer a chat completion with the key "old"
    When I make an API key "new" and revoke the key "old" with rbee keys
    Then within 1 second both queens refuse the key "old" with code "INVALID_API_KEY"
    And both queens answer a chat completion with the key "new"
    And rbee keys list shows "old" revoked and "new" active, with fingerprints and no secret

  @SEC-4
  Scenario: A key over its rate limit gets 429 with Retry-After; other keys go on
    Given a running cluster
    And I made an API key "limited" allowing 2 requests per minute
    And I made an API key "other" with rbee keys create
    When I ask 3 times with the key "limited"
    Then the first 2 are answered and the third is HTTP 429 with code "RATE_LIMITED" and a Retry-After
    And a chat completion with the key "other" is answered

  @SEC-15
  Scenario: Only the key that made a request may cancel it
    Given a running cluster
    And I made an API key "alice" with rbee keys create
    And I made an API key "mallory" with rbee keys create
    When the key "alice" streams "Count from one to fifty in words." with max_tokens 60
    And the key "mallory" sends DELETE for that request
    Then mallory gets HTTP 404 with code "REQUEST_NOT_FOUND"
    And the request's stream runs to its end, not cancelled
    And the log records that request as made by the key "alice" and never cancelled

  # What a web page can send without asking the browser first (text/plain, a form) never runs.
  @Gap-S1
  Scenario Outline: A chat completion not sent as JSON is refused with 415
    Given a running cluster
    When I post a chat completion with the cluster's key as "<content type>"
    Then the response is HTTP 415 with code "UNSUPPORTED_MEDIA_TYPE" and no slot was claimed for it

    Examples:
      | content type                      |
      | text/plain                        |
      | application/x-www-form-urlencoded |
      | multipart/form-data; boundary=x   |

  # Slow-header (slowloris) clients and clients that hoard connections.
  @Gap-S2
  Scenario: A client that trickles its headers is cut off, and no client holds more than its share of connections
    Given a running cluster
    And a second queen on it with RBEE_HEADER_TIMEOUT_SECS=1 and RBEE_MAX_CONNECTIONS_PER_CLIENT=3
    When a client sends that queen half of a request's headers and waits
    Then that queen closes the connection within 3 seconds, having answered nothing
    When a client opens 3 connections to that queen and then a fourth
    Then the fourth is closed at once while the first 3 stay open
    And once they are gone that queen answers a chat completion

  # CORS is off unless origins are configured.
  @Gap-S3
  Scenario: A web page may call the API only from an origin the queen was given
    Given a running cluster
    And a second queen on it with RBEE_CORS_ORIGINS=https://app.example
    Then a browser's preflight from "https://evil.example" is allowed by neither queen
    And a browser's preflight from "https://app.example" is allowed by the second queen for POST with authorization and content-type
    And a chat completion from "https://app.example" with the cluster's key is answered with Access-Control-Allow-Origin "https://app.example"
