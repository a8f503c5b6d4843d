// Cognito sign-in for the chat page: USER_PASSWORD_AUTH and REFRESH_TOKEN_AUTH over the
// AWSCognitoIdentityProviderService JSON API (the same calls the AWS SDKs make), plus sign-out.

const STORAGE_KEY = "aigw.session";
const REFRESH_MARGIN_S = 120; // refresh this long before the tokens expire

export class CognitoError extends Error {
  constructor(type, message) {
    super(message || type);
    this.name = "CognitoError";
    this.type = type;
  }
}

function endpointOf(config) {
  return config.cognito.endpoint || `https://cognito-idp.${config.region}.amazonaws.com/`;
}

async function call(config, target, body) {
  let response;
  try {
    response = await fetch(endpointOf(config), {
      method: "POST",
      headers: {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": `AWSCognitoIdentityProviderService.${target}`,
      },
      body: JSON.stringify(body),
    });
  } catch (err) {
    throw new CognitoError("NetworkError", "The sign-in service could not be reached.");
  }
  const text = await response.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = {};
  }
  if (!response.ok) {
    const type = String(data.__type || response.headers.get("x-amzn-errortype") || "Error").split("#").pop().split(":")[0];
    throw new CognitoError(type, data.message || data.Message || `Sign-in failed (${response.status}).`);
  }
  return data;
}

/** The claims of a JWT (read, not verified: the server verifies). */
export function claimsOf(token) {
  const part = token.split(".")[1] || "";
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (part.length % 4)) % 4);
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

/**
 * A signed-in user's tokens. `idToken` authorizes AppSync Events calls; the session refreshes itself
 * before expiry and tells listeners through `onchange` (new tokens) and `onexpired` (refresh failed).
 */
export class Session {
  constructor(config, tokens) {
    this.config = config;
    this.tokens = tokens; // {idToken, accessToken, refreshToken, expiresAt (ms)}
    this.onchange = null;
    this.onexpired = null;
    this._timer = null;
    this._refreshing = null;
  }

  get idToken() {
    return this.tokens.idToken;
  }

  get claims() {
    return claimsOf(this.tokens.idToken);
  }

  get sub() {
    return this.claims.sub;
  }

  get username() {
    const c = this.claims;
    return c.email || c["cognito:username"] || c.sub; // the pool signs in by email
  }

  get groups() {
    return this.claims["cognito:groups"] || [];
  }

  /** A valid ID token, refreshed first when it is about to expire. */
  async token() {
    if (Date.now() > this.tokens.expiresAt - REFRESH_MARGIN_S * 1000) await this.refresh();
    return this.tokens.idToken;
  }

  schedule() {
    clearTimeout(this._timer);
    const delay = Math.max(5_000, this.tokens.expiresAt - REFRESH_MARGIN_S * 1000 - Date.now());
    this._timer = setTimeout(() => this.refresh().catch(() => {}), delay);
  }

  refresh() {
    if (this._refreshing) return this._refreshing;
    this._refreshing = (async () => {
      try {
        const data = await call(this.config, "InitiateAuth", {
          AuthFlow: "REFRESH_TOKEN_AUTH",
          ClientId: this.config.cognito.client_id,
          AuthParameters: { REFRESH_TOKEN: this.tokens.refreshToken },
        });
        this.tokens = tokensFrom(data.AuthenticationResult, this.tokens.refreshToken);
        save(this.tokens);
        this.schedule();
        if (this.onchange) this.onchange(this);
      } catch (err) {
        if (this.onexpired) this.onexpired(err);
        throw err;
      } finally {
        this._refreshing = null;
      }
    })();
    return this._refreshing;
  }

  /** Forget the tokens here and, best effort, revoke them at Cognito. */
  async signOut() {
    clearTimeout(this._timer);
    sessionStorage.removeItem(STORAGE_KEY);
    const access = this.tokens.accessToken;
    this.tokens = { idToken: "", accessToken: "", refreshToken: "", expiresAt: 0 };
    if (access) {
      try {
        await call(this.config, "GlobalSignOut", { AccessToken: access });
      } catch {
        // Signed out locally either way.
      }
    }
  }
}

function tokensFrom(result, previousRefresh) {
  if (!result || !result.IdToken) throw new CognitoError("UnexpectedResponse", "Sign-in returned no tokens.");
  return {
    idToken: result.IdToken,
    accessToken: result.AccessToken,
    refreshToken: result.RefreshToken || previousRefresh,
    expiresAt: Date.now() + (result.ExpiresIn || 3600) * 1000,
  };
}

function save(tokens) {
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify(tokens));
}

/**
 * A step Cognito asks for before it hands out tokens: `name` is NEW_PASSWORD_REQUIRED, MFA_SETUP (add a TOTP
 * authenticator) or SOFTWARE_TOKEN_MFA (type its code). Answer it with `answerChallenge`.
 */
export class Challenge {
  constructor(config, data, username) {
    this.config = config;
    this.name = data.ChallengeName;
    this.session = data.Session;
    const parameters = data.ChallengeParameters || {};
    // The pool's own name for the user (a UUID when people sign in by email), which the answers must carry.
    this.username = parameters.USER_ID_FOR_SRP || parameters.USERNAME || username;
    this.email = username;
  }

  /** MFA_SETUP, first step: a new TOTP secret for the user's authenticator app, and its otpauth:// link. */
  async totpSecret() {
    const data = await call(this.config, "AssociateSoftwareToken", { Session: this.session });
    this.session = data.Session || this.session;
    const label = encodeURIComponent(`AI Gateway:${this.email}`);
    return { secret: data.SecretCode, uri: `otpauth://totp/${label}?secret=${data.SecretCode}&issuer=AI%20Gateway` };
  }
}

export const SUPPORTED_CHALLENGES = ["NEW_PASSWORD_REQUIRED", "MFA_SETUP", "SOFTWARE_TOKEN_MFA"];

function sessionOrChallenge(config, data, username) {
  if (data.ChallengeName) {
    if (!SUPPORTED_CHALLENGES.includes(data.ChallengeName)) {
      throw new CognitoError(data.ChallengeName, `This account needs a sign-in step (${data.ChallengeName}) this page does not offer.`);
    }
    return new Challenge(config, data, username);
  }
  const tokens = tokensFrom(data.AuthenticationResult);
  save(tokens);
  const session = new Session(config, tokens);
  session.schedule();
  return session;
}

/** Signs in with a password: a `Session`, or a `Challenge` to answer first. */
export async function signIn(config, username, password) {
  const data = await call(config, "InitiateAuth", {
    AuthFlow: "USER_PASSWORD_AUTH",
    ClientId: config.cognito.client_id,
    AuthParameters: { USERNAME: username, PASSWORD: password },
  });
  return sessionOrChallenge(config, data, username);
}

/**
 * Answers a challenge (`{newPassword}` or `{code}`): a `Session`, or the next `Challenge` (a new password can be
 * followed by MFA set-up). For MFA_SETUP, call `challenge.totpSecret()` first and pass the app's first code.
 */
export async function answerChallenge(challenge, { newPassword, code }) {
  const { config } = challenge;
  const responses = { USERNAME: challenge.username };
  let session = challenge.session;
  if (challenge.name === "NEW_PASSWORD_REQUIRED") {
    responses.NEW_PASSWORD = newPassword;
  } else if (challenge.name === "SOFTWARE_TOKEN_MFA") {
    responses.SOFTWARE_TOKEN_MFA_CODE = code;
  } else if (challenge.name === "MFA_SETUP") {
    const verified = await call(config, "VerifySoftwareToken", { Session: session, UserCode: code, FriendlyDeviceName: "web" });
    if (verified.Status && verified.Status !== "SUCCESS") throw new CognitoError("CodeMismatchException", "That code did not match.");
    session = verified.Session || session;
  }
  const data = await call(config, "RespondToAuthChallenge", {
    ChallengeName: challenge.name,
    ClientId: config.cognito.client_id,
    Session: session,
    ChallengeResponses: responses,
  });
  return sessionOrChallenge(config, data, challenge.email);
}

/** The session kept in this tab (sessionStorage), refreshed if needed; null when there is none. */
export async function restore(config) {
  let tokens;
  try {
    tokens = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null");
  } catch {
    tokens = null;
  }
  if (!tokens || !tokens.refreshToken) return null;
  const session = new Session(config, tokens);
  try {
    await session.token();
  } catch {
    sessionStorage.removeItem(STORAGE_KEY);
    return null;
  }
  session.schedule();
  return session;
}

/** Human text for a sign-in failure. */
export function describe(err) {
  switch (err && err.type) {
    case "NotAuthorizedException":
      return "Wrong username or password.";
    case "UserNotFoundException":
      return "Wrong username or password.";
    case "UserNotConfirmedException":
      return "This account is not confirmed yet.";
    case "PasswordResetRequiredException":
      return "This account needs a password reset.";
    case "TooManyRequestsException":
      return "Too many attempts; wait a moment and try again.";
    case "CodeMismatchException":
    case "EnableSoftwareTokenMFAException":
      return "That code did not match. Codes change every 30 seconds: try the current one.";
    case "ExpiredCodeException":
      return "That code has expired. Try the current one.";
    case "InvalidPasswordException":
      return err.message || "That password does not meet the pool's rules.";
    default:
      return (err && err.message) || "Sign-in failed.";
  }
}
