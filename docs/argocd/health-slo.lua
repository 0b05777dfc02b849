-- Argo CD health check for ringwarden.dev/v1alpha1 SLO.
-- Reads what the ringwarden operator writes to the status: observedGeneration,
-- the conditions Ready and Invalid, the state and its figures. Met and AtRisk
-- are Healthy, Breached and Unreliable are Degraded, NoData is Progressing.
-- See docs/gitops.md.
local hs = {}

local function condition(conditions, kind)
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function says(c)
  return (c.reason or "") .. ": " .. (c.message or "")
end

-- Numbers as the status holds them: 99 rather than 99.0.
local function num(x)
  if x == nil then
    return "?"
  end
  if x == math.floor(x) then
    return tostring(math.floor(x))
  end
  return tostring(x)
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to evaluate the SLO"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to evaluate the latest spec"
  return hs
end

local invalid = condition(status.conditions, "Invalid")
if invalid ~= nil and invalid.status == "True" then
  hs.status = "Degraded"
  hs.message = says(invalid)
  return hs
end
local ready = condition(status.conditions, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to evaluate the SLO"
  return hs
end
if ready.status ~= "True" then
  -- ProbeNotRunning, NoThresholdSlot: nothing is counted for this SLO.
  hs.status = "Degraded"
  hs.message = says(ready)
  return hs
end

local state = status.state
local figures = "SLI " .. num(status.sli) .. "% (target " .. num(obj.spec.target) .. "%), budget left " .. num(status.budgetRemaining) .. "%"
if state == "Met" then
  hs.status = "Healthy"
  hs.message = "Met: " .. figures
elseif state == "AtRisk" then
  hs.status = "Healthy"
  local fast = "?"
  if status.burnRate ~= nil then
    fast = num(status.burnRate.fast)
  end
  hs.message = "AtRisk: " .. figures .. ", burn rate " .. fast .. "x"
elseif state == "Breached" then
  hs.status = "Degraded"
  hs.message = "Breached: " .. figures
elseif state == "Unreliable" then
  hs.status = "Degraded"
  hs.message = "Unreliable: drop rate " .. num(status.dropRate) .. " above maxDropRate " .. num(obj.spec.maxDropRate) .. ", so the SLI cannot be trusted"
elseif state == "NoData" then
  hs.status = "Progressing"
  hs.message = "NoData: no event counted in the window yet"
else
  hs.status = "Progressing"
  hs.message = "Waiting for the first evaluation"
end
return hs
